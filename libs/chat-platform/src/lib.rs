//! Platform helpers every service uses the same way: configuration from
//! `CHAT_…` env and an optional file, telemetry, the shutdown contract,
//! health/readiness/metrics endpoints and the HTTP layer stack, and NATS
//! connection setup.

pub mod config;
pub mod http;
pub mod nats;
pub mod nats_security;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, Secret, Settings, Source};
pub use shutdown::{Shutdown, shutdown_signal};
