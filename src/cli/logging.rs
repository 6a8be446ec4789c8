//! Quiet by default; RUST_LOG-style filtering; `--debug` logs every request.

use tracing_subscriber::EnvFilter;

pub fn init(debug: bool) {
    let filter = if debug {
        EnvFilter::new("stratafs=debug")
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"))
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
