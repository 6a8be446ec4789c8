//! `stratafs run`: a command in a throwaway writable view, unmounted and
//! cleaned up however the command ends.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stratafs::Mount;
use stratafs::store::VerifyMode;

pub struct RunArgs {
    pub lowers: Vec<PathBuf>,
    pub image: Option<String>,
    pub store: Option<PathBuf>,
    pub verify: VerifyMode,
    pub keep_upper: Option<PathBuf>,
    pub at: Option<PathBuf>,
    pub command: Vec<OsString>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists: the request threads inherit the mask (the
    // command gets a clean one, see `unblock_signals_in_child`).
    let signals = stratafs::sys::block_termination_signals().context("blocking signals")?;
    let mut builder = Mount::builder();
    for l in &args.lowers {
        builder = builder.lower(l);
    }
    if let Some(image) = &args.image {
        let store = super::store_cmds::open(&args.store)?;
        builder = builder
            .image(&store, image, args.verify)
            .with_context(|| format!("preparing image {image}"))?;
    }
    if builder_is_empty(&args) {
        anyhow::bail!("nothing to run in: give --lower DIR or a stored IMAGE");
    }
    let mut work = None;
    builder = match &args.keep_upper {
        Some(upper) => {
            std::fs::create_dir_all(upper)
                .with_context(|| format!("creating {}", upper.display()))?;
            let w = stratafs::mount::work_beside(upper)?;
            work = Some(w.clone());
            builder.upper(upper).work(w)
        }
        None => builder.ephemeral_upper(),
    };
    let mounted = match &args.at {
        Some(at) => builder.mount_at(at),
        None => builder.mount_temp(),
    };
    let mnt = match mounted.context("mount failed") {
        Ok(m) => m,
        Err(e) => {
            remove_work(&work);
            return Err(e);
        }
    };
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest).current_dir(mnt.path());
    stratafs::sys::unblock_signals_in_child(&mut cmd);
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            drop(mnt);
            remove_work(&work);
            return Err(e).with_context(|| format!("cannot run {}", program.to_string_lossy()));
        }
    };
    let pid = rustix::process::Pid::from_child(&child);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                if let Some(sig) = rustix::process::Signal::from_named_raw(sig) {
                    let _ = rustix::process::kill_process(pid, sig);
                }
            }
        })
        .context("starting the signal thread")?;
    let status = child.wait().context("waiting for the command")?;
    let unmounted = mnt.unmount();
    remove_work(&work);
    unmounted.context("unmount failed")?;
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn builder_is_empty(args: &RunArgs) -> bool {
    args.lowers.is_empty() && args.image.is_none()
}

fn remove_work(work: &Option<PathBuf>) {
    if let Some(w) = work {
        let _ = std::fs::remove_dir_all(w);
    }
}
