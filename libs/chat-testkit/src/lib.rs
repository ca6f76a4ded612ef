//! Test kit: real `nats-server` processes (single node or 3-node cluster) on
//! free ports with temp dirs, killed on drop; a WebSocket test client; raw
//! HTTP and WebSocket sockets for hostile input; and waiting on a condition
//! with a deadline instead of sleeping.

pub mod link;
pub mod nats;
pub mod raw;
pub mod wait;
pub mod ws;

pub use link::Link;
pub use nats::{NatsCluster, NatsServer, free_port};
pub use wait::{eventually, within};
pub use ws::WsClient;
