//! Conformance suites every store backend must pass: the one definition of
//! how a store behaves. Backends call them from their tests with a factory
//! that returns a fresh (or at least shared-but-isolated) store; every case
//! uses freshly generated ids, so a factory may also return one shared store.
//! A failing case panics with a message naming the suite, case and values.

mod history;
mod page;
mod service_accounts;
mod sessions;
mod users;

use chat_core::events::{EventBody, MemberOp, RoomEvent};
use chat_core::{ClientMsgId, RoomId, SCHEMA_VERSION, UserId};

pub use history::history_store_suite;
pub use service_accounts::service_account_store_suite;
pub use sessions::session_store_suite;
pub use users::user_store_suite;

use crate::StoreError;

/// The value of a store call, or a panic naming the call that failed.
fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("conformance: {what}: unexpected store error: {e}"))
}

fn cmid(s: &str) -> ClientMsgId {
    ClientMsgId::parse(s).unwrap_or_else(|e| panic!("conformance: bad test cmid {s}: {e}"))
}

/// A message event.
fn msg(room: &RoomId, seq: u64, from: &UserId, id: &str, text: &str) -> RoomEvent {
    RoomEvent {
        v: SCHEMA_VERSION,
        room: room.clone(),
        seq,
        ts: 1_700_000_000_000 + seq,
        from: from.clone(),
        body: EventBody::Msg {
            cmid: cmid(id),
            text: text.to_string(),
        },
    }
}

/// A member event.
fn member(room: &RoomId, seq: u64, user: &UserId, op: MemberOp) -> RoomEvent {
    RoomEvent {
        v: SCHEMA_VERSION,
        room: room.clone(),
        seq,
        ts: 1_700_000_000_000 + seq,
        from: user.clone(),
        body: EventBody::Member {
            user: user.clone(),
            op,
        },
    }
}

fn seqs(events: &[RoomEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}
