//! Attributes as the union reports them, independent of any FUSE types.

use rustix::fs::{FileType, Stat};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_file_type(ft: FileType) -> Option<Kind> {
        Some(match ft {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDev,
            FileType::BlockDevice => Kind::BlockDev,
            FileType::Unknown => return None,
        })
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        Kind::from_file_type(FileType::from_raw_mode(mode))
    }
}

/// A point in time as seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky, without the type.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

fn time(sec: i64, nsec: i64) -> Time {
    Time {
        sec,
        nsec: u32::try_from(nsec).unwrap_or(0),
    }
}

impl Attr {
    /// Attributes of a layer entry, reported under union inode number `ino`.
    pub fn from_stat(ino: u64, st: &Stat) -> Option<Attr> {
        Some(Attr {
            ino,
            kind: Kind::from_mode(st.st_mode)?,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        })
    }
}
