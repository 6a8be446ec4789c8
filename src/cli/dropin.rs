//! The command lines of mount programs: fuse-overlayfs' own
//! (`stratafs [-f] [-d] -o lowerdir=…,upperdir=…,workdir=… MOUNTPOINT`, as
//! containers/storage runs its `mount_program`) and a mount(8) helper's
//! (`mount.fuse.stratafs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::overlay_options::OverlayOptions;
use stratafs::layer::DialectChoice;
use stratafs::mount::{self, MountSpec};
use stratafs::union::UpperSpec;

/// Names under which the binary acts as a mount(8) helper.
pub fn is_mount_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.fuse.stratafs" || name == "mount.stratafs"
}

/// A parsed mount-program command line.
#[derive(Debug, Default)]
struct Invocation {
    options: Vec<String>,
    foreground: bool,
    debug: bool,
    single_thread: bool,
    /// mount(8)'s `-f`: do everything but the mount.
    fake: bool,
    positionals: Vec<PathBuf>,
}

fn text(arg: OsString) -> anyhow::Result<String> {
    arg.into_string()
        .map_err(|a| anyhow::anyhow!("argument {a:?} is not valid UTF-8"))
}

fn parse(args: Vec<OsString>, helper: bool) -> anyhow::Result<Invocation> {
    let mut inv = Invocation::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            inv.positionals.push(arg.into());
            continue;
        };
        match s {
            "-o" => {
                let list = it.next().context("option -o needs a value")?;
                inv.options.push(text(list)?);
            }
            _ if s.starts_with("-o") => inv.options.push(s[2..].to_string()),
            "-d" | "--debug" => inv.debug = true,
            "-f" if helper => inv.fake = true,
            "-f" => inv.foreground = true,
            "-s" if !helper => inv.single_thread = true,
            // mount(8): sloppy, no mtab, verbose.
            "-s" | "-n" | "-v" if helper => {}
            "-N" | "-t" if helper => {
                it.next();
            }
            "--" => inv.positionals.extend(it.by_ref().map(PathBuf::from)),
            _ if s.starts_with('-') && s.len() > 1 => {
                bail!("unknown option '{s}' (see 'stratafs --help')")
            }
            _ => inv.positionals.push(arg.into()),
        }
    }
    Ok(inv)
}

/// Runs a fuse-overlayfs-style or mount-helper command line.
pub fn run(args: Vec<OsString>, helper: bool) -> anyhow::Result<()> {
    let inv = parse(args, helper)?;
    let (source, mountpoint) = match inv.positionals.as_slice() {
        [m] => (None, m.clone()),
        [s, m] => (Some(s.clone()), m.clone()),
        [] => bail!("no mount point given (see 'stratafs --help')"),
        _ => bail!("too many arguments: expected [SOURCE] MOUNTPOINT"),
    };
    let opts = OverlayOptions::parse(&inv.options).map_err(anyhow::Error::msg)?;
    if opts.lowers.is_empty() {
        bail!("no lower layers: pass -o lowerdir=DIR[:DIR...]");
    }
    for opt in &opts.not_yet {
        eprintln!("stratafs: warning: option '{opt}' is accepted but has no effect yet");
    }
    let upper = match (opts.upper, opts.work) {
        (Some(upper), Some(work)) => Some(UpperSpec {
            upper,
            work,
            dialect: DialectChoice::Overlay,
            volatile: opts.volatile,
            redirect_dir: opts.redirect_dir,
            metacopy: opts.metacopy,
        }),
        (Some(_), None) => bail!("upperdir needs a workdir: pass -o workdir=DIR"),
        (None, Some(_)) => bail!("workdir given without upperdir"),
        (None, None) => None,
    };
    let debug = inv.debug || opts.debug;
    super::logging::init(debug, None);
    let mut fuse = opts.fuse;
    if inv.single_thread {
        fuse.threads = Some(1);
    }
    if fuse.fsname.is_none() {
        fuse.fsname = source.map(|s| s.to_string_lossy().into_owned());
    }
    let spec = MountSpec {
        upper,
        foreground: inv.foreground || debug,
        fuse,
        view: opts.view,
        ..MountSpec::new(opts.lowers, mountpoint)
    };
    if inv.fake {
        return Ok(());
    }
    mount::run(&spec).context("mount failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn fuse_overlayfs_argv_forms() {
        let inv = parse(
            args(&["-f", "-o", "lowerdir=/l", "-oupperdir=/u", "/mnt"]),
            false,
        )
        .unwrap();
        assert!(inv.foreground);
        assert_eq!(inv.options, vec!["lowerdir=/l", "upperdir=/u"]);
        assert_eq!(inv.positionals, vec![PathBuf::from("/mnt")]);
        assert!(parse(args(&["--frob", "/mnt"]), false).is_err());
        assert!(parse(args(&["-o"]), false).is_err());
    }

    #[test]
    fn helper_argv_treats_f_as_fake() {
        let inv = parse(
            args(&["overlay", "/mnt", "-f", "-n", "-o", "lowerdir=/l"]),
            true,
        )
        .unwrap();
        assert!(inv.fake);
        assert!(!inv.foreground);
        assert_eq!(inv.positionals.len(), 2);
    }
}
