//! Command-line parsing and dispatch. No filesystem logic lives here.

mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use stratafs::mount::{self, MountSpec};

#[derive(Debug, Parser)]
#[command(
    name = "stratafs",
    version,
    about = "A userspace union filesystem for container image layers",
    long_about = "stratafs merges a stack of read-only layer directories into one tree \
                  through FUSE, with the semantics of Linux overlayfs."
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
        /// Stay in the foreground; Ctrl-C or SIGTERM unmounts.
        #[arg(short, long)]
        foreground: bool,
        /// Number of FUSE request loops (default: one per CPU, at least 2).
        #[arg(long, default_value_t = 0, value_name = "N")]
        threads: usize,
        /// Log every request (same as RUST_LOG=stratafs=debug); implies --foreground.
        #[arg(short, long)]
        debug: bool,
        /// Where to mount the merged tree.
        mountpoint: PathBuf,
    },
    /// Unmount a stratafs mount.
    Umount {
        /// Detach now and clean up when no longer busy.
        #[arg(short, long)]
        lazy: bool,
        mountpoint: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let debug = matches!(cli.command, Command::Mount { debug: true, .. });
    logging::init(debug);
    match run(cli) {
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
            foreground,
            threads,
            debug,
            mountpoint,
        } => {
            let spec = MountSpec {
                lowers,
                mountpoint,
                foreground: foreground || debug,
                threads,
            };
            mount::run(&spec).context("mount failed")
        }
        Command::Umount { lazy, mountpoint } => {
            mount::unmount(&mountpoint, lazy).context("umount failed")
        }
    }
}
