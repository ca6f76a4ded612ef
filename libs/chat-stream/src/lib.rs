//! JetStream access shared by services: creating the room stream and durable
//! consumers, acknowledging in batches ([`acks`]), sharing its partitions between instances ([`partitions`]), appending room events with a gap-free room sequence
//! ([`RoomLog`]), and a live view of the presence bucket ([`PresenceView`]).

pub mod acks;
pub mod partitions;
pub mod presence_view;
pub mod room_log;
pub mod setup;

pub use presence_view::PresenceView;
pub use room_log::{AppendError, Appended, RoomLog};
pub use setup::{SetupError, StreamSettings};
