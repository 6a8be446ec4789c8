//! Forking into the background once the mount is ready, the way
//! fuse-overlayfs and sshfs do: the parent waits on a pipe for the child's
//! verdict, prints any error, and exits with the matching status.

use std::io::{PipeWriter, Read, Write};

use super::MountError;
use crate::sys::{ForkResult, fork};

/// The child's end of the readiness pipe.
pub struct Ready {
    pipe: PipeWriter,
}

impl Ready {
    pub fn succeeded(mut self) {
        let _ = self.pipe.write_all(b"ok");
        detach_stdio();
        // Do not keep the caller's working directory busy.
        let _ = rustix::process::chdir("/");
    }

    pub fn failed(mut self, message: &str) {
        let _ = self.pipe.write_all(message.as_bytes());
    }
}

/// Once mounted, the daemon must not hold the caller's terminal or pipes
/// open: a caller capturing our output would otherwise wait forever.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

/// Runs `serve` in a forked child and returns in the parent once it reports.
pub fn spawn(serve: impl FnOnce(Ready) -> Result<(), MountError>) -> Result<(), MountError> {
    let (mut reader, writer) =
        std::io::pipe().map_err(|e| MountError::io("creating the readiness pipe", e))?;
    match fork().map_err(|e| MountError::io("forking the daemon", e))? {
        ForkResult::Parent { .. } => {
            drop(writer);
            let mut verdict = String::new();
            let _ = reader.read_to_string(&mut verdict);
            match verdict.as_str() {
                "ok" => Ok(()),
                "" => Err(MountError::Daemon(
                    "the daemon exited before the mount was ready".into(),
                )),
                msg => Err(MountError::Daemon(msg.to_string())),
            }
        }
        ForkResult::Child => {
            drop(reader);
            // A process group of its own keeps the terminal's job-control
            // signals (Ctrl-C, hangup of the foreground job) away. Not a
            // session of its own: with autogroup scheduling a new session
            // is a new scheduling group, and a daemon in another group than
            // its callers is woken on another CPU for every request, which
            // costs most of what FUSE over io_uring saves (docs/performance.md).
            let _ = rustix::process::setpgid(None, None);
            let result = serve(Ready { pipe: writer });
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
    }
}
