//! Quiet by default; RUST_LOG-style filtering; `--debug` logs every request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

pub fn init(debug: bool) {
    let filter = if debug {
        EnvFilter::new("stratafs=debug")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    // Each request is a span: with --debug, one line as it starts.
    let spans = if debug { FmtSpan::NEW } else { FmtSpan::NONE };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
