//! One `init` for structured logs: JSON (`CHAT_LOG_FORMAT=json`) or human
//! text, filtered by `RUST_LOG` (default `info`). Safe to call twice.

/// Installs the global subscriber; later calls are no-ops.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
