//! The canonical manifest of a layer tree (byte format in `docs/format.md`):
//! one line per entry, sorted by path bytes, whose SHA256 is the layer digest.

use std::collections::HashMap;

use super::StoreError;
use super::digest::{Digest, hex};

/// First line of every manifest; a new format gets a new line.
pub const HEADER: &[u8] = b"stratafs-manifest-v1\n";

/// Metadata every real entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name; overlay and private xattrs excluded.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What an entry is (see `docs/format.md` for each record's fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A directory.
    Dir {
        /// Its metadata.
        meta: Meta,
        /// Whether it hides the layers below.
        opaque: bool,
    },
    /// A regular file.
    File {
        /// Its metadata.
        meta: Meta,
        /// Content length.
        size: u64,
        /// Content digest.
        sha256: Digest,
    },
    /// A symbolic link.
    Symlink {
        /// Its metadata.
        meta: Meta,
        /// Where it points (never followed).
        target: Vec<u8>,
    },
    /// A character device.
    Char {
        /// Its metadata.
        meta: Meta,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    Block {
        /// Its metadata.
        meta: Meta,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo {
        /// Its metadata.
        meta: Meta,
    },
    /// A socket.
    Socket {
        /// Its metadata.
        meta: Meta,
    },
    /// Another name of the inode recorded at `target` (earlier in the manifest).
    HardLink {
        /// The record holding the inode.
        target: Vec<u8>,
    },
    /// Hides `path` in the layers below.
    Whiteout,
    /// A directory the layer holds only for entries below it: no metadata
    /// of its own (a merged view shows the layers below's).
    Implied,
}

/// One entry. `path` starts with `/`; the layer root is `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `/`-rooted path.
    pub path: Vec<u8>,
    /// What is there.
    pub body: Body,
}

impl Body {
    /// The metadata, for entries that carry their own.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Body::Dir { meta, .. }
            | Body::File { meta, .. }
            | Body::Symlink { meta, .. }
            | Body::Char { meta, .. }
            | Body::Block { meta, .. }
            | Body::Fifo { meta }
            | Body::Socket { meta } => Some(meta),
            Body::HardLink { .. } | Body::Whiteout | Body::Implied => None,
        }
    }

    fn tag(&self) -> &'static [u8] {
        match self {
            Body::Dir { .. } => b"d",
            Body::File { .. } => b"f",
            Body::Symlink { .. } => b"l",
            Body::Char { .. } => b"c",
            Body::Block { .. } => b"b",
            Body::Fifo { .. } => b"p",
            Body::Socket { .. } => b"s",
            Body::HardLink { .. } => b"h",
            Body::Whiteout => b"w",
            Body::Implied => b"i",
        }
    }
}

/// Bytes written as they are in paths, link targets and xattr names; every
/// other byte is `%XX` (uppercase hex), so fields never contain a space,
/// comma, `=` or newline.
fn plain(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'%' | b',' | b'=')
}

pub fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

fn unescape(field: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'%' {
            let h = std::str::from_utf8(field.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(h, 16).ok()?;
            if plain(b) || h.bytes().any(|c| c.is_ascii_lowercase()) {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(out)
}

fn write_meta(out: &mut Vec<u8>, m: &Meta) {
    out.extend_from_slice(
        format!(
            " {:04o} {} {} {}.{:09}",
            m.mode, m.uid, m.gid, m.mtime, m.mtime_nsec
        )
        .as_bytes(),
    );
}

fn write_xattrs(out: &mut Vec<u8>, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    out.push(b' ');
    if xattrs.is_empty() {
        out.push(b'-');
        return;
    }
    for (i, (name, value)) in xattrs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        escape(out, name);
        out.push(b'=');
        out.extend_from_slice(hex(value).as_bytes());
    }
}

impl Record {
    /// Appends this record's line, newline included.
    pub fn write(&self, out: &mut Vec<u8>) {
        escape(out, &self.path);
        out.push(b' ');
        out.extend_from_slice(self.body.tag());
        match &self.body {
            Body::Dir { meta, opaque } => {
                write_meta(out, meta);
                out.extend_from_slice(if *opaque { b" opaque" } else { b" -" });
            }
            Body::File { meta, size, sha256 } => {
                write_meta(out, meta);
                out.extend_from_slice(format!(" {size} {}", sha256.hex()).as_bytes());
            }
            Body::Symlink { meta, target } => {
                write_meta(out, meta);
                out.push(b' ');
                escape(out, target);
            }
            Body::Char { meta, major, minor } | Body::Block { meta, major, minor } => {
                write_meta(out, meta);
                out.extend_from_slice(format!(" {major}:{minor}").as_bytes());
            }
            Body::Fifo { meta } | Body::Socket { meta } => write_meta(out, meta),
            Body::HardLink { target } => {
                out.push(b' ');
                escape(out, target);
            }
            Body::Whiteout | Body::Implied => {}
        }
        if let Some(meta) = self.body.meta() {
            write_xattrs(out, &meta.xattrs);
        }
        out.push(b'\n');
    }
}

/// A layer's manifest: records sorted by path bytes, one per path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Sorted by path bytes.
    pub records: Vec<Record>,
}

impl Manifest {
    /// Sorts, and turns every name after the first of an inode into a
    /// hard-link record pointing at the first (in manifest order).
    /// `inodes` pairs record indexes with the inode they were read from.
    pub fn canonical(mut entries: Vec<(Record, Option<u64>)>) -> Manifest {
        entries.sort_by(|a, b| a.0.path.cmp(&b.0.path));
        let mut first: HashMap<u64, Vec<u8>> = HashMap::new();
        let records = entries
            .into_iter()
            .map(|(record, ino)| match ino {
                Some(ino) => match first.get(&ino) {
                    Some(target) => Record {
                        path: record.path,
                        body: Body::HardLink {
                            target: target.clone(),
                        },
                    },
                    None => {
                        first.insert(ino, record.path.clone());
                        record
                    }
                },
                None => record,
            })
            .collect();
        Manifest { records }
    }

    /// The manifest file: header line, then one line per record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        for r in &self.records {
            r.write(&mut out);
        }
        out
    }

    /// The layer digest: SHA256 of [`Manifest::to_bytes`].
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Parses a manifest and checks it is canonical (sorted, unique, links
    /// pointing back); `bytes` must re-serialize to themselves.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, StoreError> {
        let body = bytes
            .strip_prefix(HEADER)
            .ok_or_else(|| StoreError::BadManifest("missing header line".into()))?;
        let mut records: Vec<Record> = Vec::new();
        for (n, line) in body.split_inclusive(|b| *b == b'\n').enumerate() {
            let bad = |why: &str| StoreError::BadManifest(format!("line {}: {why}", n + 2));
            let line = line.strip_suffix(b"\n").ok_or_else(|| bad("no newline"))?;
            let record = parse_line(line).ok_or_else(|| bad("malformed record"))?;
            if let Some(prev) = records.last()
                && prev.path >= record.path
            {
                return Err(bad("not sorted"));
            }
            records.push(record);
        }
        let m = Manifest { records };
        if m.to_bytes() != bytes {
            return Err(StoreError::BadManifest("not in canonical form".into()));
        }
        Ok(m)
    }

    /// The record of `path` (`/`-rooted), by binary search.
    pub fn find(&self, path: &[u8]) -> Option<&Record> {
        self.records
            .binary_search_by(|r| r.path.as_slice().cmp(path))
            .ok()
            .map(|i| &self.records[i])
    }

    /// Follows a hard-link record to the record holding the inode.
    pub fn resolve<'a>(&'a self, r: &'a Record) -> Option<&'a Record> {
        match &r.body {
            Body::HardLink { target } => self.find(target),
            _ => Some(r),
        }
    }

    /// Total bytes of regular file content (each inode once).
    pub fn content_size(&self) -> u64 {
        self.records
            .iter()
            .map(|r| match r.body {
                Body::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }
}

fn parse_meta<'a>(f: &mut impl Iterator<Item = &'a [u8]>) -> Option<Meta> {
    let text = |b: &'a [u8]| std::str::from_utf8(b).ok();
    let mode = u32::from_str_radix(text(f.next()?)?, 8).ok()?;
    let uid = text(f.next()?)?.parse().ok()?;
    let gid = text(f.next()?)?.parse().ok()?;
    let (sec, nsec) = text(f.next()?)?.split_once('.')?;
    Some(Meta {
        mode,
        uid,
        gid,
        mtime: sec.parse().ok()?,
        mtime_nsec: nsec.parse().ok()?,
        xattrs: Vec::new(),
    })
}

fn parse_xattrs(field: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if field == b"-" {
        return Some(Vec::new());
    }
    field
        .split(|b| *b == b',')
        .map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            let value = std::str::from_utf8(&pair[eq + 1..]).ok()?;
            if value.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..value.len() / 2)
                .map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some((unescape(&pair[..eq])?, bytes))
        })
        .collect()
}

fn parse_dev(field: &[u8]) -> Option<(u32, u32)> {
    let (a, b) = std::str::from_utf8(field).ok()?.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn parse_line(line: &[u8]) -> Option<Record> {
    let mut f = line.split(|b| *b == b' ');
    let path = unescape(f.next()?)?;
    let tag = f.next()?;
    let body = match tag {
        b"h" => Body::HardLink {
            target: unescape(f.next()?)?,
        },
        b"w" => Body::Whiteout,
        b"i" => Body::Implied,
        _ => {
            let mut meta = parse_meta(&mut f)?;
            let body = match tag {
                b"d" => {
                    let opaque = match f.next()? {
                        b"opaque" => true,
                        b"-" => false,
                        _ => return None,
                    };
                    Body::Dir {
                        meta: meta.clone(),
                        opaque,
                    }
                }
                b"f" => {
                    let size = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
                    let sha256 = Digest::from_hex(std::str::from_utf8(f.next()?).ok()?)?;
                    Body::File {
                        meta: meta.clone(),
                        size,
                        sha256,
                    }
                }
                b"l" => Body::Symlink {
                    meta: meta.clone(),
                    target: unescape(f.next()?)?,
                },
                b"c" | b"b" => {
                    let (major, minor) = parse_dev(f.next()?)?;
                    if tag == b"c" {
                        Body::Char {
                            meta: meta.clone(),
                            major,
                            minor,
                        }
                    } else {
                        Body::Block {
                            meta: meta.clone(),
                            major,
                            minor,
                        }
                    }
                }
                b"p" => Body::Fifo { meta: meta.clone() },
                b"s" => Body::Socket { meta: meta.clone() },
                _ => return None,
            };
            meta.xattrs = parse_xattrs(f.next()?)?;
            set_xattrs(body, meta.xattrs)
        }
    };
    if f.next().is_some() {
        return None;
    }
    Some(Record { path, body })
}

fn set_xattrs(mut body: Body, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Body {
    match &mut body {
        Body::Dir { meta, .. }
        | Body::File { meta, .. }
        | Body::Symlink { meta, .. }
        | Body::Char { meta, .. }
        | Body::Block { meta, .. }
        | Body::Fifo { meta }
        | Body::Socket { meta } => meta.xattrs = xattrs,
        Body::HardLink { .. } | Body::Whiteout | Body::Implied => {}
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o4755,
            uid: 0,
            gid: 7,
            mtime: -3,
            mtime_nsec: 5,
            xattrs: vec![(b"user.a b".to_vec(), vec![0, 255])],
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let records = vec![
            (
                Record {
                    path: b"/".to_vec(),
                    body: Body::Dir {
                        meta: meta(),
                        opaque: false,
                    },
                },
                None,
            ),
            (
                Record {
                    path: b"/a file\n%".to_vec(),
                    body: Body::File {
                        meta: meta(),
                        size: 3,
                        sha256: Digest::of(b"abc"),
                    },
                },
                Some(9),
            ),
            (
                Record {
                    path: b"/z".to_vec(),
                    body: Body::File {
                        meta: meta(),
                        size: 3,
                        sha256: Digest::of(b"abc"),
                    },
                },
                Some(9),
            ),
            (
                Record {
                    path: b"/l".to_vec(),
                    body: Body::Symlink {
                        meta: meta(),
                        target: b"../x,y=z".to_vec(),
                    },
                },
                None,
            ),
            (
                Record {
                    path: b"/d".to_vec(),
                    body: Body::Char {
                        meta: meta(),
                        major: 1,
                        minor: 3,
                    },
                },
                None,
            ),
            (
                Record {
                    path: b"/gone".to_vec(),
                    body: Body::Whiteout,
                },
                None,
            ),
        ];
        let m = Manifest::canonical(records);
        assert_eq!(
            m.find(b"/z").map(|r| &r.body),
            Some(&Body::HardLink {
                target: b"/a file\n%".to_vec()
            })
        );
        let bytes = m.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("/a%20file%0A%25 f 4755 0 7 -3.000000005 3 ba78"));
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        let mut flipped = bytes.clone();
        let i = text.find("4755").unwrap();
        flipped[i + 1] = b'6';
        assert_ne!(Digest::of(&flipped), m.digest());
    }

    #[test]
    fn rejects_non_canonical() {
        assert!(Manifest::parse(b"stratafs-manifest-v1\n/b w\n/a w\n").is_err());
        assert!(Manifest::parse(b"stratafs-manifest-v1\n/%61 w\n").is_err());
        assert!(Manifest::parse(b"stratafs-manifest-v1\n/a w extra\n").is_err());
        assert!(Manifest::parse(b"stratafs-manifest-v1\n/a w\n").is_ok());
    }
}
