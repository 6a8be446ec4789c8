//! fuse-overlayfs' `-o` option language: comma-separated options, a
//! backslash escaping the next character, `lowerdir` split on unescaped
//! colons (top layer first). Every option fuse-overlayfs accepts is
//! accepted here; an unknown one is an error, as in fuse-overlayfs.

use std::path::PathBuf;
use std::time::Duration;

use stratafs::mount::{Access, FuseOptions};
use stratafs::union::{IdMap, IdRange, OverrideStat, ViewOptions};

/// Everything a fuse-overlayfs-style option list can say.
#[derive(Debug, Default)]
pub struct OverlayOptions {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub volatile: bool,
    /// Directory renames by redirect (`redirect_dir=on`, the default) or EXDEV.
    pub redirect_dir: bool,
    /// Metadata-only copy-up (`metacopy=on`, the default).
    pub metacopy: bool,
    pub debug: bool,
    pub fuse: FuseOptions,
    pub view: ViewOptions,
    /// Options accepted for compatibility that change nothing here.
    pub ignored: Vec<String>,
    /// Options accepted whose effect stratafs does not provide yet: warned about.
    pub not_yet: Vec<String>,
}

/// Splits `s` on unescaped `sep` outside double quotes, keeping escapes
/// and quotes in place. Quotes matter for containers/storage, which passes
/// `context="system_u:object_r:container_file_t:s0:c1,c2"`.
fn split_escaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Removes one level of backslash escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(n) = chars.next()
        {
            out.push(n);
            continue;
        }
        out.push(c);
    }
    out
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{name}={value}: expected 0 or 1")),
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name}={value}: not a valid number"))
}

/// `DISK:SHOWN:LEN[:DISK:SHOWN:LEN...]`, as fuse-overlayfs reads it: ids in
/// `[DISK, DISK+LEN)` on disk show as `SHOWN + (id - DISK)` in the mount.
/// containers/storage writes `ContainerID:HostID:Size`: the layers hold
/// container ids, the mount shows host ids.
fn id_mapping(name: &str, value: &str) -> Result<IdMap, String> {
    // containers/storage writes a leading ':' (`uidmapping=:0:1000:1`).
    let fields: Vec<&str> = value
        .strip_prefix(':')
        .unwrap_or(value)
        .split(':')
        .collect();
    if fields.is_empty() || !fields.len().is_multiple_of(3) {
        return Err(format!(
            "{name}={value}: expected ID:MAPPED-ID:LENGTH triples separated by ':'"
        ));
    }
    let mut ranges = Vec::new();
    for t in fields.chunks(3) {
        let disk: u32 = number(name, t[0])?;
        let shown: u32 = number(name, t[1])?;
        let len: u32 = number(name, t[2])?;
        let fits = |start: u32| u64::from(start) + u64::from(len) <= 1 << 32;
        if len == 0 || !fits(shown) || !fits(disk) {
            return Err(format!(
                "{name}={value}: range {}:{}:{} is empty or runs past the largest id",
                t[0], t[1], t[2]
            ));
        }
        ranges.push(IdRange { shown, disk, len });
    }
    Ok(IdMap::new(ranges))
}

impl OverlayOptions {
    /// Parses the option lists of every `-o`, in order; later ones win.
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<OverlayOptions, String> {
        let mut o = OverlayOptions {
            redirect_dir: true,
            metacopy: true,
            ..OverlayOptions::default()
        };
        for group in groups {
            for opt in split_escaped(group.as_ref(), ',') {
                if !opt.is_empty() {
                    o.apply(opt)?;
                }
            }
        }
        Ok(o)
    }

    fn ignore(&mut self, opt: &str) {
        self.ignored.push(opt.to_string());
    }

    /// Accepted for compatibility, but what it asks for is not done yet.
    fn unsupported(&mut self, opt: &str) {
        self.not_yet.push(opt.to_string());
    }

    fn apply(&mut self, opt: &str) -> Result<(), String> {
        let (name, raw) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let value = raw.map(unescape);
        let need = |v: Option<String>| v.ok_or_else(|| format!("option {name} needs a value"));
        match name {
            "lowerdir" => {
                let v = raw.ok_or("option lowerdir needs a value")?;
                self.lowers = split_escaped(v, ':')
                    .into_iter()
                    .map(|p| PathBuf::from(unescape(p)))
                    .collect();
                if self.lowers.iter().any(|p| p.as_os_str().is_empty()) {
                    return Err(format!("lowerdir={v}: empty layer path"));
                }
            }
            "upperdir" => self.upper = Some(need(value)?.into()),
            "workdir" => self.work = Some(need(value)?.into()),
            "uidmapping" => self.view.uid_map = id_mapping(name, &need(value)?)?,
            "gidmapping" => self.view.gid_map = id_mapping(name, &need(value)?)?,
            "squash_to_root" => {
                self.view.squash_root = true;
            }
            "squash_to_uid" => self.view.squash_uid = Some(number(name, &need(value)?)?),
            "squash_to_gid" => self.view.squash_gid = Some(number(name, &need(value)?)?),
            "static_nlink" => self.view.static_nlink = true,
            "noacl" => self.fuse.acl = false,
            "fsync" => self.volatile = !flag(name, &need(value)?)?,
            "volatile" => self.volatile = true,
            "timeout" => {
                let secs: f64 = number(name, &need(value)?)?;
                if !(0.0..=1e9).contains(&secs) {
                    return Err(format!("timeout={secs}: out of range"));
                }
                self.fuse.timeout = Some(Duration::from_secs_f64(secs));
            }
            "threaded" => {
                if !flag(name, &need(value)?)? {
                    self.fuse.threads = Some(1);
                }
            }
            "writeback" => self.fuse.writeback = Some(flag(name, &need(value)?)?),
            "passthrough" => self.fuse.passthrough = Some(flag(name, &need(value)?)?),
            "uring" => self.fuse.uring = Some(flag(name, &need(value)?)?),
            "noxattrs" => self.view.no_xattrs = flag(name, &need(value)?)?,
            "xattr_permissions" => {
                self.view.override_stat = match need(value)?.as_str() {
                    "0" => None,
                    "1" => Some(OverrideStat::Privileged),
                    "2" => Some(OverrideStat::User),
                    v => return Err(format!("xattr_permissions={v}: expected 0, 1 or 2")),
                }
            }
            "xino" => match need(value)?.as_str() {
                // Inode numbers are always composed from layer and real
                // number, which is what xino=on asks for.
                "auto" | "on" | "off" => self.ignore(opt),
                v => return Err(format!("xino={v}: expected auto, on or off")),
            },
            // Node ids are the inode numbers fuser reports, so they cannot
            // be folded without a collision-free 32-bit allocator: not yet.
            "ino32_t" => self.unsupported(opt),
            // As in kernel overlayfs: `off` makes directory renames EXDEV
            // (fuse-overlayfs' only mode); redirects are always followed.
            "redirect_dir" => match need(value)?.as_str() {
                "on" => self.redirect_dir = true,
                "off" | "nofollow" | "follow" => self.redirect_dir = false,
                v => {
                    return Err(format!(
                        "redirect_dir={v}: expected on, off, follow or nofollow"
                    ));
                }
            },
            "metacopy" => self.metacopy = flag(name, &need(value)?)?,
            // fuse-overlayfs parses context= and never uses it either.
            "context" | "fscontext" | "defcontext" | "rootcontext" => self.unsupported(opt),
            // Kernel overlayfs options fuse-overlayfs accepts and ignores.
            "index" | "nfs_export" | "userxattr" | "fast_ino" | "uuid" => self.ignore(opt),
            "plugins" => self.unsupported(opt),
            "debug" => self.debug = true,
            "allow_other" => self.fuse.access = Access::AllowOther,
            "allow_root" => self.fuse.access = Access::AllowRoot,
            "default_permissions" => {}
            "ro" => self.fuse.read_only = true,
            "rw" => self.fuse.read_only = false,
            "suid" => self.fuse.suid = Some(true),
            "nosuid" => self.fuse.suid = Some(false),
            "dev" => self.fuse.dev = Some(true),
            "nodev" => self.fuse.dev = Some(false),
            "exec" => self.fuse.exec = true,
            "noexec" => self.fuse.exec = false,
            "atime" | "strictatime" | "relatime" => self.fuse.atime = true,
            "noatime" => self.fuse.atime = false,
            "sync" => self.fuse.sync = true,
            "async" => self.fuse.sync = false,
            "dirsync" => self.fuse.dirsync = true,
            "max_write" => self.fuse.max_write = Some(number(name, &need(value)?)?),
            "fsname" => self.fuse.fsname = Some(need(value)?),
            "subtype" => self.fuse.subtype = Some(need(value)?),
            // libfuse and mount(8) options with nothing to do here: caching
            // and threading are chosen by stratafs, and the fstab-only ones
            // never reach a file system.
            "auto_unmount" | "clone_fd" | "max_idle_threads" | "max_threads" | "max_read"
            | "max_readahead" | "kernel_cache" | "auto_cache" | "noforget" | "nodiratime"
            | "diratime" | "big_writes" | "splice_read" | "splice_write" | "splice_move"
            | "use_ino" | "readdir_ino" | "direct_io" | "hard_remove" | "entry_timeout"
            | "negative_timeout" | "attr_timeout" | "ac_attr_timeout" | "blksize" | "silent"
            | "lazytime" | "nolazytime" | "iversion" | "noiversion" | "defaults" | "auto"
            | "noauto" | "nofail" | "_netdev" | "user" | "nouser" | "users" | "owner" | "group"
            | "comment" | "loop" => self.ignore(opt),
            _ if name.starts_with("x-") => self.ignore(opt),
            _ => return Err(format!("unknown option '{opt}'")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_on_unescaped_colons_in_order() {
        let o =
            OverlayOptions::parse(&[r"lowerdir=/a\:b:/c\,d:/e,upperdir=/u,workdir=/w"]).unwrap();
        assert_eq!(
            o.lowers,
            vec![
                PathBuf::from("/a:b"),
                PathBuf::from("/c,d"),
                PathBuf::from("/e")
            ]
        );
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
    }

    #[test]
    fn repeated_groups_and_any_order() {
        let o = OverlayOptions::parse(&["workdir=/w", "upperdir=/u,lowerdir=/l", "ro"]).unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/l")]);
        assert!(o.fuse.read_only);
    }

    #[test]
    fn id_mappings_parse_as_triples() {
        let o = OverlayOptions::parse(&["lowerdir=/l,uidmapping=0:1000:1:1:100000:65536"]).unwrap();
        // fuse-overlayfs' order: on-disk id, shown id, count.
        assert_eq!(o.view.uid_map.to_shown(0), 1000);
        assert_eq!(o.view.uid_map.to_shown(5), 100004);
        assert_eq!(o.view.uid_map.to_disk(100004), Some(5));
        let lead = OverlayOptions::parse(&["uidmapping=:0:1000:1"]).unwrap();
        assert_eq!(lead.view.uid_map.to_shown(0), 1000);
        assert!(OverlayOptions::parse(&["uidmapping=0:1000"]).is_err());
        assert!(OverlayOptions::parse(&["uidmapping=0:1000:0"]).is_err());
        assert!(OverlayOptions::parse(&["gidmapping=4294967295:0:2"]).is_err());
    }

    #[test]
    fn unknown_and_malformed_options_are_errors() {
        assert!(OverlayOptions::parse(&["lowerdir=/l,frobnicate"]).is_err());
        assert!(OverlayOptions::parse(&["xattr_permissions=3"]).is_err());
        assert!(OverlayOptions::parse(&["fsync=maybe"]).is_err());
        assert!(OverlayOptions::parse(&["lowerdir=/a::/b"]).is_err());
        assert!(OverlayOptions::parse(&["upperdir"]).is_err());
    }

    #[test]
    fn quoted_values_keep_their_commas() {
        let o = OverlayOptions::parse(&[
            r#"lowerdir=/l,context="system_u:object_r:container_file_t:s0:c1,c2",fsync=0"#,
        ])
        .unwrap();
        assert_eq!(o.not_yet.len(), 1);
        assert!(o.volatile);
    }

    #[test]
    fn fsync_and_volatile() {
        assert!(OverlayOptions::parse(&["fsync=0"]).unwrap().volatile);
        assert!(OverlayOptions::parse(&["volatile"]).unwrap().volatile);
        assert!(!OverlayOptions::parse(&["fsync=1"]).unwrap().volatile);
    }
}
