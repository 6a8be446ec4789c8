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
    pub fn is_device(self) -> bool {
        matches!(self, Kind::CharDev | Kind::BlockDev)
    }

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

    /// Every kind, in declaration order (`kind as u32` is the index).
    const ALL: [Kind; 7] = [
        Kind::Dir,
        Kind::File,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Socket,
        Kind::CharDev,
        Kind::BlockDev,
    ];

    /// The inverse of `kind as u32`.
    pub(crate) fn from_index(i: u32) -> Kind {
        Kind::ALL.get(i as usize).copied().unwrap_or(Kind::File)
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

/// [`Attr`] as a node keeps it: the inode number is the node's, the type and
/// permissions share a word, a device's number takes the place of its size
/// (always 0), and the times' halves are grouped so that no field is padded
/// (72 bytes instead of 104, for every node the kernel holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAttr {
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    blksize: u32,
    nsecs: [u32; 3],
    secs: [i64; 3],
    size_or_rdev: u64,
    blocks: u64,
}

impl PackedAttr {
    pub fn pack(a: &Attr) -> PackedAttr {
        PackedAttr {
            mode: (a.kind as u32) << 16 | u32::from(a.perm),
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            blksize: a.blksize,
            nsecs: [a.atime.nsec, a.mtime.nsec, a.ctime.nsec],
            secs: [a.atime.sec, a.mtime.sec, a.ctime.sec],
            size_or_rdev: if a.kind.is_device() { a.rdev } else { a.size },
            blocks: a.blocks,
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_index(self.mode >> 16)
    }

    pub fn unpack(&self, ino: u64) -> Attr {
        let t = |i: usize| Time {
            sec: self.secs[i],
            nsec: self.nsecs[i],
        };
        let device = self.kind().is_device();
        Attr {
            ino,
            kind: self.kind(),
            perm: (self.mode & 0xffff) as u16,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: if device { self.size_or_rdev } else { 0 },
            size: if device { 0 } else { self.size_or_rdev },
            blocks: self.blocks,
            blksize: self.blksize,
            atime: t(0),
            mtime: t(1),
            ctime: t(2),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_every_field() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let n = i as u32;
            let a = Attr {
                ino: 77 + u64::from(n),
                kind,
                perm: 0o7777 - n as u16,
                nlink: u32::MAX - n,
                uid: 1000 + n,
                gid: 2000 + n,
                // A device has no size, anything else no device number.
                rdev: if kind.is_device() {
                    u64::MAX - u64::from(n)
                } else {
                    0
                },
                size: if kind.is_device() {
                    0
                } else {
                    (1 << 40) + u64::from(n)
                },
                blocks: 3 + u64::from(n),
                blksize: 4096,
                atime: Time {
                    sec: -5,
                    nsec: 999_999_999,
                },
                mtime: Time {
                    sec: i64::MAX,
                    nsec: n,
                },
                ctime: Time {
                    sec: 1_700_000_000,
                    nsec: 7,
                },
            };
            assert_eq!(PackedAttr::pack(&a).unpack(a.ino), a);
        }
        assert_eq!(std::mem::size_of::<PackedAttr>(), 72);
    }
}
