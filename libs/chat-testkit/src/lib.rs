//! Test kit: real `nats-server` processes (single node or 3-node cluster) on
//! free ports with temp dirs and the production permission setup on, killed on drop; a WebSocket test client; raw
//! HTTP and WebSocket sockets for hostile input; the backlog of a
//! partitioned service; and waiting on a condition with a deadline instead
//! of sleeping.

pub mod backlog;
pub mod link;
pub mod nats;
pub mod nats_auth;
pub mod raw;
pub mod wait;
pub mod ws;

pub use backlog::partition_backlog;
pub use chat_platform::nats_security::Role;
pub use link::Link;
pub use nats::{NatsCluster, NatsServer, free_port};
pub use nats_auth::{all_services_env, connect_as, service_env};
pub use wait::{eventually, within};
pub use ws::WsClient;
