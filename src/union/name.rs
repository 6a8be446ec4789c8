//! The name a node was reached by, kept inline when short: a listing of 100k
//! files makes 100k nodes, and a separate allocation per name would cost more
//! than the name itself.

use std::ffi::{CStr, CString};
use std::fmt;

use smallvec::SmallVec;

/// A file name with its terminating NUL; names of up to 15 bytes need no
/// allocation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Name(SmallVec<[u8; 16]>);

impl Name {
    pub fn new(name: &CStr) -> Self {
        Name(SmallVec::from_slice(name.to_bytes_with_nul()))
    }

    pub fn as_c_str(&self) -> &CStr {
        // Built only from a `CStr`, so the NUL is there; an empty name stands
        // for the default (no name).
        CStr::from_bytes_with_nul(&self.0).unwrap_or(c"")
    }

    pub fn to_c_string(&self) -> CString {
        self.as_c_str().to_owned()
    }
}

impl From<CString> for Name {
    fn from(name: CString) -> Self {
        Name::new(&name)
    }
}

impl std::ops::Deref for Name {
    type Target = CStr;

    fn deref(&self) -> &CStr {
        self.as_c_str()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_c_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_round_trip() {
        for n in [
            c"",
            c"a",
            c"entry-000123",
            c"fifteen-bytes.x",
            c"a-name-longer-than-sixteen-bytes",
        ] {
            let name = Name::new(n);
            assert_eq!(name.as_c_str(), n);
            assert_eq!(name.to_c_string().as_c_str(), n);
        }
        assert_eq!(Name::default().as_c_str(), c"");
    }

    #[test]
    fn a_name_is_no_bigger_than_three_words() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
    }
}
