//! unlink and rmdir. Removing an entry that a lower layer also has writes a
//! whiteout and copies nothing up; an upper-only entry is simply removed.

use std::ffi::OsStr;
use std::os::fd::AsFd;

use super::Union;
use super::error::{Error, Result};
use super::inode::NodeBody;
use super::lookup::checked_name;
use super::readdir::Want;

impl Union {
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, want_dir: bool) -> Result<()> {
        let mut names = self.listings.changing();
        names.touch(parent);
        self.check_writable()?;
        let upper = self.upper()?;
        let name = checked_name(name)?;
        let parent = self.nodes.get(parent)?;
        let node = self.lookup_in(&parent, name.clone())?;
        if node.is_dir() {
            names.touch(node.ino());
        }
        let result = (|| {
            let is_dir = node.is_dir();
            match (want_dir, is_dir) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                _ => {}
            }
            if is_dir && self.list(&node, Want::Names)?.len() > 2 {
                return Err(Error::NotEmpty);
            }
            // Decide and write under the node's copy-up lock, so that a copy-up
            // racing in through an open-for-write cannot publish in between.
            let _guard = node.copy_up.lock();
            let in_upper = match &node.state().body {
                NodeBody::Upper { .. } => true,
                NodeBody::Lower { .. } => false,
                NodeBody::Dir { layers } => self.is_upper(layers[0].layer),
            };
            let dir = self.upper_dir(&parent)?;
            // (Only a name in the upper layer needs a look below it.)
            if !in_upper {
                upper.write_whiteout(dir.as_fd(), &name)?;
            } else if self.lower_has(&parent, &name)? {
                upper.replace_with_whiteout(dir.as_fd(), &name, is_dir)?;
            } else {
                upper.remove_entry(dir.as_fd(), &name, is_dir)?;
            }
            parent.forget_xattrs();
            // Still open somewhere, perhaps: any later change is copied up as
            // an orphan, never back under the removed name.
            node.detach(&parent, &name);
            Ok(())
        })();
        self.nodes.forget(node.ino(), 1);
        result
    }
}
