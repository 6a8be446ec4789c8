//! Command-line parsing and dispatch. No filesystem logic lives here.

mod changes;
mod dropin;
mod logging;
mod overlay_options;
mod progress;
mod run;
mod store_cmds;

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
                  writeback, passthrough, uring, noxattrs, xattr_permissions, allow_other, allow_root, ro, suid, dev, \
                  exec, noatime, max_write, ...), mounts, and returns once the mount is ready. \
                  -f stays in the foreground, -d logs every request. Installed as \
                  mount.fuse.stratafs it serves mount(8) and /etc/fstab."
)]
struct Cli {
    /// The layer store (default: $STRATAFS_STORE, else /var/lib/stratafs
    /// for root, else $XDG_DATA_HOME/stratafs).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum VerifyArg {
    None,
    Lazy,
    Full,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a stored image, or a stack of layer directories, as one merged tree.
    #[command(override_usage = "stratafs mount IMAGE MOUNTPOINT [OPTIONS]\n       \
                                stratafs mount --lower DIR [--lower DIR...] MOUNTPOINT [OPTIONS]")]
    Mount {
        /// A lower layer directory; repeat it, top layer first (like overlayfs' lowerdir=).
        /// Above a stored image's layers when both are given.
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<PathBuf>,
        /// The writable layer; without it the mount is read-only.
        #[arg(
            long,
            value_name = "DIR",
            requires = "work",
            conflicts_with = "ephemeral"
        )]
        upper: Option<PathBuf>,
        /// A private writable layer in a temporary directory, removed at unmount.
        #[arg(long)]
        ephemeral: bool,
        /// How much of a stored image to check: none; lazy (each file on first
        /// open, EIO on a mismatch); full (every layer before mounting).
        #[arg(long, value_enum, default_value_t = VerifyArg::Lazy)]
        verify: VerifyArg,
        /// Append the daemon's log to FILE (a background daemon has no stderr).
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
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
        /// Serve requests through FUSE over io_uring (on: fail if the kernel
        /// does not offer it; default: use it when the kernel offers it,
        /// which it does once root sets fuse.enable_uring).
        #[arg(long, value_enum, value_name = "on|off")]
        uring: Option<Switch>,
        /// Log every request (same as RUST_LOG=stratafs=debug); implies --foreground.
        #[arg(short, long)]
        debug: bool,
        /// IMAGE (a stored image's name) and MOUNTPOINT, or MOUNTPOINT alone with --lower.
        #[arg(num_args = 1..=2, required = true, value_name = "[IMAGE] MOUNTPOINT")]
        targets: Vec<String>,
    },
    /// Import, list, check, export and remove stored layers.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Import, name, list and remove images (stacks of stored layers).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a command in a throwaway writable view of layers or a stored
    /// image (working directory inside it); unmounts and cleans up however
    /// it ends, and exits with its status.
    #[command(
        override_usage = "stratafs run [--lower DIR]... [IMAGE] [--keep-upper DIR] [--at DIR] -- COMMAND [ARGS...]"
    )]
    Run {
        /// A lower layer directory; repeat it, top layer first.
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<PathBuf>,
        /// Keep the changes in DIR (created if missing) instead of discarding them.
        #[arg(long, value_name = "DIR")]
        keep_upper: Option<PathBuf>,
        /// Mount on DIR (an existing empty directory) instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        at: Option<PathBuf>,
        /// How much of a stored image to check (as for mount).
        #[arg(long, value_enum, default_value_t = VerifyArg::Lazy)]
        verify: VerifyArg,
        /// A stored image, below any --lower.
        image: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
    /// List what a writable layer changed, like `docker diff`: A added,
    /// C changed, D deleted, one path a line.
    Diff {
        /// A live stratafs mount, or an upper directory.
        target: PathBuf,
        /// The lower layers of an upper directory (top first), if it is not mounted.
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<PathBuf>,
        /// A stored image as the lower layers (below any --lower).
        #[arg(long, value_name = "IMAGE")]
        from: Option<String>,
        /// The upper directory's workdir (its hard-link index), if not mounted.
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Store what a writable layer changed as a new layer (an OCI changeset)
    /// and print its digest. A live mount is frozen read-only while read.
    Commit {
        /// A live stratafs mount, or an upper directory.
        target: PathBuf,
        #[arg(long = "lower", value_name = "DIR")]
        lowers: Vec<PathBuf>,
        #[arg(long, value_name = "IMAGE")]
        from: Option<String>,
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
        /// Also name an image: the lower layers plus the new one.
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// A note kept with the layer.
        #[arg(long, short)]
        message: Option<String>,
        /// Also write the layer as a tar (.tar, .tar.gz, .tar.zst).
        #[arg(long, value_name = "FILE")]
        oci_tar: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove stored layers that no image uses and no mount holds.
    Gc {
        #[arg(long)]
        json: bool,
    },
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
    "image",
    "gc",
    "run",
    "diff",
    "commit",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

#[derive(Debug, Subcommand)]
enum LayerCommand {
    /// Store a layer from a directory tree or a layer tar (.tar, .tar.gz,
    /// .tar.zst) and print its digest.
    Import {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List stored layers.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a layer's metadata (JSON), or its canonical manifest.
    Inspect {
        digest: String,
        #[arg(long)]
        manifest: bool,
    },
    /// Re-read layers and check them against their digests.
    Verify {
        digests: Vec<String>,
        #[arg(long, conflicts_with = "digests")]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write a layer as a deterministic OCI layer tar.
    Export {
        digest: String,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Remove layers that no image uses and no mount holds.
    Rm {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Add user.overlay.* markers beside every trusted.overlay.* one (opaque
    /// directories, xattr whiteouts), so that mounts without privileges,
    /// which cannot read trusted xattrs, see them. Run as root; idempotent.
    AddUserMarkers {
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout (DIR or DIR:TAG) or a `docker save` tarball.
    Import {
        source: String,
        /// Store the image under NAME (default: its tag, or the source's name).
        #[arg(long)]
        name: Option<String>,
        /// os/arch[/variant] to pick from a multi-platform index (default: this machine's).
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Name a stack of stored layers, bottom layer first (as in OCI manifests).
    Create {
        name: String,
        #[arg(required = true)]
        layers: Vec<String>,
    },
    /// List images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an image (JSON).
    Inspect { name: String },
    /// Remove image names (their layers stay until `gc`).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let rest: Vec<_> = args.collect();
    let helper = dropin::is_mount_helper(&argv0);
    // The global `--store DIR` may come before the sub-command.
    let first = match rest.first().and_then(|a| a.to_str()) {
        Some("--store") => rest.get(2).and_then(|a| a.to_str()).unwrap_or(""),
        Some(a) if a.starts_with("--store=") => rest.get(1).and_then(|a| a.to_str()).unwrap_or(""),
        other => other.unwrap_or(""),
    };
    if helper || !SUBCOMMANDS.contains(&first) && !rest.is_empty() {
        return exit(dropin::run(rest, helper));
    }
    let cli = Cli::parse();
    let debug = matches!(cli.command, Command::Mount { debug: true, .. });
    let log = match &cli.command {
        Command::Mount { log, .. } => log.clone(),
        _ => None,
    };
    logging::init(debug, log.as_deref());
    if let Command::Run {
        lowers,
        keep_upper,
        at,
        verify,
        image,
        command,
    } = cli.command
    {
        let args = run::RunArgs {
            lowers,
            image,
            store: cli.store,
            verify: verify.into(),
            keep_upper,
            at,
            command,
        };
        return match run::run(args) {
            Ok(code) => code,
            Err(e) => {
                let _ = exit(Err(e));
                // Not the command's own status: 125, as `env`/`timeout` say.
                ExitCode::from(125)
            }
        };
    }
    exit(run(cli))
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the causes quote.
            let text = format!("{e:#}").replace('\n', "\\n");
            eprintln!("stratafs: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let store = cli.store;
    match cli.command {
        Command::Mount {
            mut lowers,
            upper,
            ephemeral,
            verify,
            log: _,
            work,
            whiteout,
            volatile,
            redirect_dir,
            metacopy,
            foreground,
            threads,
            uring,
            debug,
            targets,
        } => {
            let (image, mountpoint) = match targets.as_slice() {
                [m] => (None, PathBuf::from(m)),
                [i, m] => (Some(i.clone()), PathBuf::from(m)),
                _ => anyhow::bail!("give IMAGE MOUNTPOINT, or MOUNTPOINT with --lower"),
            };
            let mut checks = vec![None; lowers.len()];
            let mut keep_alive: Vec<std::sync::Arc<dyn std::fmt::Debug + Send + Sync>> = Vec::new();
            if let Some(image) = &image {
                let store = store_cmds::open(&store)?;
                let prepared = store
                    .prepare_image(image, verify.into(), &progress::Bar::new(false))
                    .with_context(|| format!("preparing image {image}"))?;
                lowers.extend(prepared.lowers);
                checks.extend(prepared.checks);
                keep_alive.extend(prepared.held.into_iter().map(|h| {
                    std::sync::Arc::new(h) as std::sync::Arc<dyn std::fmt::Debug + Send + Sync>
                }));
            } else if lowers.is_empty() {
                anyhow::bail!("nothing to mount: name a stored IMAGE or give --lower DIR");
            }
            let (upper, work, remove_after) = if ephemeral {
                let (dir, upper, work) = mount::ephemeral_upper()?;
                (Some(upper), Some(work), Some(dir))
            } else {
                (upper, work, None)
            };
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
                upper,
                foreground: foreground || debug,
                fuse: FuseOptions {
                    threads: Some(threads),
                    uring: uring.map(|u| u == Switch::On),
                    ..FuseOptions::default()
                },
                view: ViewOptions::default(),
                checks,
                keep_alive,
                remove_after,
                ..MountSpec::new(lowers, mountpoint)
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
        Command::Layer(LayerCommand::Import { path, json }) => {
            store_cmds::layer_import(&store_cmds::open(&store)?, &path, json)
        }
        Command::Layer(LayerCommand::Ls { json }) => {
            store_cmds::layer_ls(&store_cmds::open(&store)?, json)
        }
        Command::Layer(LayerCommand::Inspect { digest, manifest }) => {
            store_cmds::layer_inspect(&store_cmds::open(&store)?, &digest, manifest)
        }
        Command::Layer(LayerCommand::Verify { digests, all, json }) => {
            store_cmds::layer_verify(&store_cmds::open(&store)?, &digests, all, json)
        }
        Command::Layer(LayerCommand::Export { digest, output }) => {
            store_cmds::layer_export(&store_cmds::open(&store)?, &digest, output.as_deref())
        }
        Command::Layer(LayerCommand::Rm { digests }) => {
            store_cmds::layer_rm(&store_cmds::open(&store)?, &digests)
        }
        Command::Image(ImageCommand::Import {
            source,
            name,
            platform,
            json,
        }) => store_cmds::image_import(
            &store_cmds::open(&store)?,
            &source,
            name.as_deref(),
            platform.as_deref(),
            json,
        ),
        Command::Image(ImageCommand::Create { name, layers }) => {
            store_cmds::image_create(&store_cmds::open(&store)?, &name, &layers)
        }
        Command::Image(ImageCommand::Ls { json }) => {
            store_cmds::image_ls(&store_cmds::open(&store)?, json)
        }
        Command::Image(ImageCommand::Inspect { name }) => {
            store_cmds::image_inspect(&store_cmds::open(&store)?, &name)
        }
        Command::Image(ImageCommand::Rm { names }) => {
            store_cmds::image_rm(&store_cmds::open(&store)?, &names)
        }
        Command::Gc { json } => store_cmds::gc(&store_cmds::open(&store)?, json),
        Command::Diff {
            target,
            lowers,
            from,
            work,
            json,
        } => changes::diff(
            &target,
            changes::Lowers {
                dirs: lowers,
                from_image: from,
                work,
            },
            &store,
            json,
        ),
        Command::Commit {
            target,
            lowers,
            from,
            work,
            image,
            message,
            oci_tar,
            json,
        } => changes::commit(
            &target,
            changes::Lowers {
                dirs: lowers,
                from_image: from,
                work,
            },
            &store,
            changes::CommitArgs {
                image,
                message,
                oci_tar,
                json,
            },
        ),
        Command::Run { .. } => anyhow::bail!("run is dispatched before this point"),
        Command::Umount { lazy, mountpoint } => {
            let daemon = mount::find_mount(&mountpoint).map(|r| r.pid);
            mount::unmount(&mountpoint, lazy).context("umount failed")?;
            // Return once the serving process is gone, with the locks it held
            // on stored layers (a `gc` right after must see them free).
            if let Some(pid) = daemon.filter(|_| !lazy) {
                mount::wait_for_exit(pid, std::time::Duration::from_secs(10));
            }
            Ok(())
        }
    }
}

impl From<VerifyArg> for stratafs::store::VerifyMode {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::None => stratafs::store::VerifyMode::None,
            VerifyArg::Lazy => stratafs::store::VerifyMode::Lazy,
            VerifyArg::Full => stratafs::store::VerifyMode::Full,
        }
    }
}
