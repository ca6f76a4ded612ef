//! One `init` for structured logs: JSON (`CHAT_LOG_FORMAT=json`) or human
//! text, filtered by `RUST_LOG` (default `info`), on standard error (so
//! standard output carries only what a binary prints for people and
//! scripts, such as the URL to open). Colours only on a terminal, and never
//! with `NO_COLOR` set. Safe to call twice.

use std::io::IsTerminal as _;

/// Installs the global subscriber; later calls are no-ops.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    // A second init (tests, the all-in-one binary) keeps the first subscriber.
    let _already_set = if format.eq_ignore_ascii_case("json") {
        builder.json().with_current_span(true).try_init().is_err()
    } else {
        builder.try_init().is_err()
    };
}

/// Logs for tests: silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        let _already_set = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init()
            .is_err();
    }
}
