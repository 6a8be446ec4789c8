//! Quiet by default; RUST_LOG-style filtering; `--debug` logs every request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

pub fn init(debug: bool, file: Option<&std::path::Path>) {
    let filter = if debug {
        EnvFilter::new("stratafs=debug")
    } else {
        // fuser reports replies the kernel no longer wants: requests it
        // aborted or a caller gave up, and, with the io_uring queues, every
        // answer to an INTERRUPT (the request it names is on a ring, which
        // /dev/fuse does not know). None is ours to act on.
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,fuser::reply=off"))
    };
    // Each request is a span: with --debug, one line as it starts.
    let spans = if debug { FmtSpan::NEW } else { FmtSpan::NONE };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_target(false);
    let opened = file.map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    });
    let _ = match opened {
        Some(Ok(f)) => builder
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .try_init(),
        Some(Err(e)) => {
            eprintln!("stratafs: warning: cannot open the log file: {e}");
            builder.with_writer(std::io::stderr).try_init()
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
