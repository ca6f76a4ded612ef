//! The writer stores every room event exactly once: as appended, when
//! re-published or redelivered, across restarts and store failures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chat_core::events::{EventBody, RoomEvent};
use chat_core::svc::Room;
use chat_core::{ClientMsgId, RoomId, UserId, names};
use chat_store::{EventPage, HistoryStore, PageRange, SqliteStore, StoreError};
use common::{Harness, WAIT, cmid, stored, user};

fn text(i: u64) -> EventBody {
    EventBody::Msg {
        cmid: cmid(&format!("c{i}")),
        text: format!("message {i}"),
    }
}

async fn append_messages(h: &Harness, room: &RoomId, n: u64) -> Vec<RoomEvent> {
    let mut out = Vec::new();
    for i in 1..=n {
        let a = h
            .log
            .append(room, &user("alice"), text(i), None)
            .await
            .expect("append");
        out.push(a.event);
    }
    out
}

#[tokio::test]
async fn appended_events_are_stored_exactly_once_even_when_republished() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let room = RoomId::generate();
    let events = append_messages(&h, &room, 5).await;

    // Re-publish two of them (same room seq, one with altered text) as a
    // misbehaving publisher would: they get new stream sequences.
    for (i, ev) in events.iter().take(2).enumerate() {
        let mut again = ev.clone();
        if i == 1 {
            again.body = EventBody::Msg {
                cmid: cmid("c2"),
                text: "tampered".into(),
            };
        }
        h.js.publish(
            names::room_subject(&room, again.body.kind()),
            serde_json::to_vec(&again).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored in stream");
    }
    h.wait_consumer_idle().await;

    let db = h.open_db();
    assert_eq!(
        stored(&db, &room).await,
        events,
        "each event once, the first version kept"
    );
    assert_eq!(db.last_seq(&room).await.expect("last seq"), 5);
    app.stop().await;
}

#[tokio::test]
async fn events_already_in_the_store_are_ignored_when_delivered_again() {
    let h = Harness::start().await;
    let room = RoomId::generate();
    let events = append_messages(&h, &room, 6).await;
    {
        // As if a previous instance stored half of them but crashed before acking.
        let db = h.open_db();
        assert_eq!(db.append_events(&events[..3]).await.expect("pre-store"), 3);
    }
    let app = h.spawn().await;
    h.wait_consumer_idle().await;
    assert_eq!(stored(&h.open_db(), &room).await, events);
    app.stop().await;
}

#[tokio::test]
async fn events_published_while_the_service_is_down_are_stored_after_restart() {
    let h = Harness::start().await;
    let room = RoomId::generate();
    let app = h.spawn().await;
    let mut events = append_messages(&h, &room, 3).await;
    h.wait_consumer_idle().await;
    app.stop().await;

    for i in 4..=6 {
        events.push(
            h.log
                .append(&room, &user("bob"), text(i), None)
                .await
                .expect("append")
                .event,
        );
    }
    let app = h.spawn().await;
    h.wait_consumer_idle().await;
    assert_eq!(stored(&h.open_db(), &room).await, events);
    app.stop().await;
}

#[tokio::test]
async fn unparseable_events_are_terminated_and_do_not_block_later_ones() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let room = RoomId::generate();
    // Garbage goes to another room: RoomLog itself cannot append after it.
    let subject = names::room_subject(&RoomId::generate(), names::EventKind::Msg);
    for bad in [&b"not json"[..], br#"{"v":1,"room":"elsewhere","seq":1,"ts":1,"from":"a","kind":"msg","cmid":"c","text":"x"}"#] {
        h.js.publish(subject.clone(), bad.to_vec().into()).await.expect("publish").await.expect("stored");
    }
    let events = append_messages(&h, &room, 2).await;
    h.wait_consumer_idle().await;
    assert_eq!(stored(&h.open_db(), &room).await, events);
    let other = RoomId::parse("elsewhere").expect("id");
    assert!(
        stored(&h.open_db(), &other).await.is_empty(),
        "mismatched subject/room not stored"
    );
    app.stop().await;
}

/// A store whose first `fail` appends fail, then delegates.
struct FlakyStore {
    inner: SqliteStore,
    fail: usize,
    calls: AtomicUsize,
}

#[async_trait]
impl HistoryStore for FlakyStore {
    async fn create_room(&self, room: &Room) -> Result<(), StoreError> {
        self.inner.create_room(room).await
    }
    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, StoreError> {
        self.inner.get_room(id).await
    }
    async fn add_member(&self, r: &RoomId, u: &UserId, at: u64) -> Result<bool, StoreError> {
        self.inner.add_member(r, u, at).await
    }
    async fn remove_member(&self, r: &RoomId, u: &UserId) -> Result<bool, StoreError> {
        self.inner.remove_member(r, u).await
    }
    async fn is_member(&self, r: &RoomId, u: &UserId) -> Result<bool, StoreError> {
        self.inner.is_member(r, u).await
    }
    async fn members(&self, r: &RoomId) -> Result<Vec<UserId>, StoreError> {
        self.inner.members(r).await
    }
    async fn rooms_of(&self, u: &UserId) -> Result<Vec<RoomId>, StoreError> {
        self.inner.rooms_of(u).await
    }
    async fn room_count_of(&self, u: &UserId) -> Result<u64, StoreError> {
        self.inner.room_count_of(u).await
    }
    async fn rooms_created_since(&self, u: &UserId, since: u64) -> Result<u64, StoreError> {
        self.inner.rooms_created_since(u, since).await
    }
    async fn append_events(&self, events: &[RoomEvent]) -> Result<usize, StoreError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Err(StoreError::Backend("disk on fire".into()));
        }
        self.inner.append_events(events).await
    }
    async fn page(&self, r: &RoomId, range: PageRange) -> Result<EventPage, StoreError> {
        self.inner.page(r, range).await
    }
    async fn last_seq(&self, r: &RoomId) -> Result<u64, StoreError> {
        self.inner.last_seq(r).await
    }
    async fn find_message(
        &self,
        r: &RoomId,
        f: &UserId,
        c: &ClientMsgId,
    ) -> Result<Option<RoomEvent>, StoreError> {
        self.inner.find_message(r, f, c).await
    }
}

#[tokio::test]
async fn a_failed_store_write_is_nacked_and_retried_until_it_succeeds() {
    let h = Harness::start().await;
    let inner = SqliteStore::in_memory().expect("memory store");
    let store = Arc::new(FlakyStore {
        inner: inner.clone(),
        fail: 5,
        calls: AtomicUsize::new(0),
    });
    let app = h.spawn_with_store(store.clone()).await;
    let room = RoomId::generate();
    let events = append_messages(&h, &room, 4).await;

    // While writes fail nothing may be acked: the events stay pending.
    chat_testkit::eventually(WAIT, "a failed write", || {
        let n = store.calls.load(Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let stream = h.js.get_stream(names::ROOM_STREAM).await.expect("stream");
    let pending = chat_testkit::partition_backlog(&stream, names::HISTORY_DURABLE)
        .await
        .expect("consumer infos");
    // Attempt `fail + 1` is the first that can succeed; if it had not begun
    // when the infos were read, nothing had been written yet.
    if store.calls.load(Ordering::SeqCst) <= store.fail {
        assert!(pending > 0, "events were acked before any write succeeded");
    }
    h.wait_consumer_idle().await;
    assert_eq!(
        stored(&inner, &room).await,
        events,
        "all events stored once after retries"
    );
    assert!(
        store.calls.load(Ordering::SeqCst) > 5,
        "the write was retried after failures"
    );
    app.stop().await;
}
