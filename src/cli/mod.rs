//! Command-line parsing and dispatch. No filesystem logic lives here.

mod dropin;
mod logging;
mod overlay_options;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use stratafs::layer::DialectChoice;
use stratafs::mount::{self, FuseOptions, MountSpec};
use stratafs::union::{UpperSpec, ViewOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum WhiteoutArg {
    Overlay,
    Oci,
}

#[derive(Debug, Parser)]
#[command(
    name = "stratafs",
    version,
    long_version = concat!(
        env!("CARGO_PKG_VERSION"),
        "\nFUSE: fuser 0.18.0 (Rust, no libfuse); kernel protocol negotiated at mount",
        "\nunprivileged mounts: fusermount3 (package fuse3)",
        "\ndrop-in command line: fuse-overlayfs 1.x options (-o lowerdir=...)"
    ),
    about = "A userspace union filesystem for container image layers",
    long_about = "stratafs merges a stack of read-only layer directories into one tree \
                  through FUSE, with the semantics of Linux overlayfs.",
    override_usage = "stratafs <COMMAND> ...\n       \
                      stratafs [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTION...] MOUNTPOINT",
    after_help = "Drop-in for fuse-overlayfs: the second form takes fuse-overlayfs' command line \
                  and options (lowerdir, upperdir, workdir, uidmapping, gidmapping, squash_to_root, \
                  squash_to_uid, squash_to_gid, static_nlink, noacl, fsync, volatile, timeout, \
                  writeback, noxattrs, xattr_permissions, allow_other, allow_root, ro, suid, dev, \
                  exec, noatime, max_write, ...), mounts, and returns once the mount is ready. \
                  -f stays in the foreground, -d logs every request. Installed as \
                  mount.fuse.stratafs it serves mount(8) and /etc/fstab."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a stack of layers as one merged tree.
    Mount {
        /// A lower layer directory; repeat it, top layer first (like overlayfs' lowerdir=).
        #[arg(long = "lower", value_name = "DIR", required = true)]
        lowers: Vec<PathBuf>,
        /// The writable layer; without it the mount is read-only.
        #[arg(long, value_name = "DIR", requires = "work")]
        upper: Option<PathBuf>,
        /// Scratch directory on the same filesystem as --upper.
        #[arg(long, value_name = "DIR", requires = "upper")]
        work: Option<PathBuf>,
        /// Whiteout and opaque markers to write: overlay (char 0/0, xattrs;
        /// falls back to oci where mknod is refused) or oci (.wh. files).
        #[arg(long, value_enum, default_value_t = WhiteoutArg::Overlay)]
        whiteout: WhiteoutArg,
        /// Do not fsync copy-ups before publishing them (faster, not crash-safe).
        #[arg(long)]
        volatile: bool,
        /// Rename directories that lower layers contribute to with a redirect
        /// (on) or answer EXDEV as overlayfs' redirect_dir=off does (off).
        #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off")]
        redirect_dir: Switch,
        /// Copy up only the metadata of a lower file on chmod, chown, utimes,
        /// xattr changes, link and rename (on), or its data too (off).
        #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off")]
        metacopy: Switch,
        /// Stay in the foreground; Ctrl-C or SIGTERM unmounts.
        #[arg(short, long)]
        foreground: bool,
        /// Number of FUSE request loops (default: two per CPU, at least 4).
        #[arg(long, default_value_t = 0, value_name = "N")]
        threads: usize,
        /// Log every request (same as RUST_LOG=stratafs=debug); implies --foreground.
        #[arg(short, long)]
        debug: bool,
        /// Where to mount the merged tree.
        mountpoint: PathBuf,
    },
    /// Work on layer directories.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Unmount a stratafs mount.
    Umount {
        /// Detach now and clean up when no longer busy.
        #[arg(short, long)]
        lazy: bool,
        mountpoint: PathBuf,
    },
}

const SUBCOMMANDS: &[&str] = &[
    "mount",
    "umount",
    "layer",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

#[derive(Debug, Subcommand)]
enum LayerCommand {
    /// Add user.overlay.* markers beside every trusted.overlay.* one (opaque
    /// directories, xattr whiteouts), so that mounts without privileges,
    /// which cannot read trusted xattrs, see them. Run as root; idempotent.
    AddUserMarkers {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<_> = args.collect();
    let helper = dropin::is_mount_helper(&argv0);
    let first = rest.first().and_then(|a| a.to_str()).unwrap_or("");
    if helper || !SUBCOMMANDS.contains(&first) && !rest.is_empty() {
        return exit(dropin::run(rest, helper));
    }
    let cli = Cli::parse();
    let debug = matches!(cli.command, Command::Mount { debug: true, .. });
    logging::init(debug);
    exit(run(cli))
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratafs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount {
            lowers,
            upper,
            work,
            whiteout,
            volatile,
            redirect_dir,
            metacopy,
            foreground,
            threads,
            debug,
            mountpoint,
        } => {
            let upper = match (upper, work) {
                (Some(upper), Some(work)) => Some(UpperSpec {
                    upper,
                    work,
                    dialect: match whiteout {
                        WhiteoutArg::Overlay => DialectChoice::Overlay,
                        WhiteoutArg::Oci => DialectChoice::Oci,
                    },
                    volatile,
                    redirect_dir: redirect_dir == Switch::On,
                    metacopy: metacopy == Switch::On,
                }),
                _ => None,
            };
            let spec = MountSpec {
                lowers,
                upper,
                mountpoint,
                foreground: foreground || debug,
                fuse: FuseOptions {
                    threads: Some(threads),
                    ..FuseOptions::default()
                },
                view: ViewOptions::default(),
            };
            mount::run(&spec).context("mount failed")
        }
        Command::Layer(LayerCommand::AddUserMarkers { dirs }) => {
            for dir in dirs {
                let layer = stratafs::layer::Layer::open(&dir)?;
                let st = stratafs::layer::add_user_markers(&layer)
                    .with_context(|| format!("adding user markers in {}", dir.display()))?;
                println!(
                    "{}: {} directories, {} opaque markers and {} whiteout markers added",
                    dir.display(),
                    st.directories,
                    st.opaque_added,
                    st.whiteouts_added
                );
            }
            Ok(())
        }
        Command::Umount { lazy, mountpoint } => {
            mount::unmount(&mountpoint, lazy).context("umount failed")
        }
    }
}
