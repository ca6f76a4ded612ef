//! Shared vocabulary of the chat backend: typed identifiers, the NATS contract
//! (subjects, streams, buckets, headers), the client wire protocol and the
//! payloads services exchange. Every name that crosses a process boundary is
//! defined here, once.

pub mod decode;
pub mod events;
pub mod ids;
pub mod names;
pub mod svc;
pub mod time;
pub mod wire;

pub use ids::{ClientMsgId, GatewayId, IdError, RoomId, UserId};

/// Version of every payload defined in this crate. Carried as `v` in JSON
/// bodies; a consumer rejects versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;
