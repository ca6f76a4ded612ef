//! The [`HistoryStore`] conformance suite: rooms, memberships in both
//! directions, idempotent appends, last sequence and message lookup. Paging
//! lives in `page.rs`.

use std::sync::Arc;

use chat_core::events::MemberOp;
use chat_core::svc::Room;
use chat_core::{RoomId, UserId};

use super::{cmid, member, msg, ok, page, seqs};
use crate::{HistoryStore, PageRange, StoreError};

/// Runs every [`HistoryStore`] case against stores made by `make`.
pub async fn history_store_suite(make: impl Fn() -> Arc<dyn HistoryStore>) {
    rooms_are_created_once_and_read_back(make().as_ref()).await;
    membership_is_kept_in_both_directions(make().as_ref()).await;
    membership_of_unknown_rooms_is_not_found(make().as_ref()).await;
    appends_store_events_once_and_ignore_replays(make().as_ref()).await;
    a_resent_message_id_is_stored_once(make().as_ref()).await;
    last_seq_is_the_highest_stored_per_room(make().as_ref()).await;
    messages_are_found_by_sender_and_client_id(make().as_ref()).await;
    rooms_are_counted_per_member_and_per_creator(make().as_ref()).await;
    page::page_cases(&make).await;
}

pub(super) fn room(name: &str) -> Room {
    Room {
        id: RoomId::generate(),
        name: name.to_string(),
        created_by: UserId::generate(),
        created_at: 1_700_000_000_000,
    }
}

async fn rooms_are_created_once_and_read_back(store: &dyn HistoryStore) {
    let r = room("general");
    ok(store.create_room(&r).await, "create_room");
    let got = ok(store.get_room(&r.id).await, "get_room");
    assert_eq!(
        got.as_ref(),
        Some(&r),
        "rooms: get_room returns the created room"
    );

    let mut again = r.clone();
    again.name = "other".into();
    match store.create_room(&again).await {
        Err(StoreError::AlreadyExists(_)) => {}
        other => panic!(
            "rooms: creating room {} twice gave {other:?}, want AlreadyExists",
            r.id
        ),
    }
    let got = ok(store.get_room(&r.id).await, "get_room after duplicate");
    assert_eq!(
        got,
        Some(r),
        "rooms: a rejected duplicate leaves the room unchanged"
    );

    let none = ok(
        store.get_room(&RoomId::generate()).await,
        "get_room unknown",
    );
    assert_eq!(none, None, "rooms: unknown room gives None");
}

async fn membership_is_kept_in_both_directions(store: &dyn HistoryStore) {
    let (r1, r2) = (room("one"), room("two"));
    ok(store.create_room(&r1).await, "create_room r1");
    ok(store.create_room(&r2).await, "create_room r2");
    let mut users = [UserId::generate(), UserId::generate(), UserId::generate()];
    users.sort();
    let [a, b, c] = users.clone();

    // Added out of order: lists come back sorted by id.
    for u in [&c, &a, &b] {
        assert!(
            ok(store.add_member(&r1.id, u, 1).await, "add_member"),
            "members: first add of {u} to {} reports newly added",
            r1.id
        );
    }
    assert!(
        !ok(store.add_member(&r1.id, &a, 2).await, "add_member again"),
        "members: adding an existing member reports false"
    );
    ok(store.add_member(&r2.id, &a, 3).await, "add_member r2");

    let members = ok(store.members(&r1.id).await, "members");
    assert_eq!(
        members,
        users.to_vec(),
        "members: all members, sorted by user id, once each"
    );
    let mut want_rooms = vec![r1.id.clone(), r2.id.clone()];
    want_rooms.sort();
    assert_eq!(
        ok(store.rooms_of(&a).await, "rooms_of a"),
        want_rooms,
        "members: rooms_of lists every room of the user, sorted by room id"
    );
    assert_eq!(
        ok(store.rooms_of(&b).await, "rooms_of b"),
        vec![r1.id.clone()]
    );
    assert!(
        ok(store.is_member(&r1.id, &b).await, "is_member"),
        "members: b is in r1"
    );
    assert!(
        !ok(store.is_member(&r2.id, &b).await, "is_member"),
        "members: b is not in r2"
    );

    assert!(
        ok(store.remove_member(&r1.id, &a).await, "remove_member"),
        "members: removing a member reports true"
    );
    assert!(
        !ok(store.remove_member(&r1.id, &a).await, "remove_member again"),
        "members: removing a non-member reports false"
    );
    assert!(
        !ok(store.is_member(&r1.id, &a).await, "is_member"),
        "members: a left r1"
    );
    assert_eq!(
        ok(store.members(&r1.id).await, "members after leave"),
        vec![b.clone(), c.clone()],
        "members: a removed from the room's list"
    );
    assert_eq!(
        ok(store.rooms_of(&a).await, "rooms_of a after leave"),
        vec![r2.id.clone()],
        "members: r1 removed from a's rooms"
    );
    assert!(
        ok(store.add_member(&r1.id, &a, 4).await, "re-join"),
        "members: re-joining after leaving reports newly added"
    );
    assert_eq!(
        ok(store.rooms_of(&UserId::generate()).await, "rooms_of"),
        Vec::<RoomId>::new()
    );
}

async fn membership_of_unknown_rooms_is_not_found(store: &dyn HistoryStore) {
    let (r, u) = (RoomId::generate(), UserId::generate());
    match store.add_member(&r, &u, 1).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("members: add_member to unknown room gave {other:?}, want NotFound"),
    }
    match store.remove_member(&r, &u).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("members: remove_member from unknown room gave {other:?}, want NotFound"),
    }
    assert!(!ok(store.is_member(&r, &u).await, "is_member unknown room"));
    assert!(ok(store.members(&r).await, "members unknown room").is_empty());
    assert!(
        ok(store.rooms_of(&u).await, "rooms_of").is_empty(),
        "members: failed add left no trace"
    );
}

async fn appends_store_events_once_and_ignore_replays(store: &dyn HistoryStore) {
    let r = RoomId::generate();
    let (a, b) = (UserId::generate(), UserId::generate());
    let batch = vec![
        member(&r, 1, &a, MemberOp::Join),
        msg(&r, 2, &a, "c1", "hello"),
        msg(&r, 3, &b, "c1", "same cmid, other sender"),
    ];
    assert_eq!(
        ok(store.append_events(&[]).await, "append empty"),
        0,
        "append: empty batch"
    );
    assert_eq!(
        ok(store.append_events(&batch).await, "append"),
        3,
        "append: all new"
    );
    assert_eq!(
        ok(store.append_events(&batch).await, "replay"),
        0,
        "append: a replayed batch stores nothing"
    );
    let overlapping = vec![
        batch[2].clone(),
        msg(&r, 4, &b, "c2", "new"),
        msg(&r, 4, &b, "c2", "new"),
        member(&r, 5, &b, MemberOp::Leave),
    ];
    assert_eq!(
        ok(store.append_events(&overlapping).await, "overlap"),
        2,
        "append: only unseen (room, seq) count, duplicates inside a batch too"
    );
    let all = ok(
        store
            .page(
                &r,
                PageRange {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await,
        "page",
    );
    let mut want = batch.clone();
    want.push(overlapping[1].clone());
    want.push(overlapping[3].clone());
    assert_eq!(
        all.events, want,
        "append: events read back exactly as appended, ascending"
    );

    let other = RoomId::generate();
    let changed = msg(&r, 2, &a, "c9", "a different event at a stored seq");
    assert_eq!(
        ok(
            store
                .append_events(&[changed, msg(&other, 1, &a, "c1", "x")])
                .await,
            "mixed"
        ),
        1,
        "append: a stored (room, seq) wins over a later different event; other rooms are independent"
    );
    let first = ok(
        store
            .page(
                &r,
                PageRange {
                    after: Some(1),
                    before: Some(3),
                    limit: 1,
                },
            )
            .await,
        "page",
    );
    assert_eq!(
        first.events,
        vec![batch[1].clone()],
        "append: the first event at a seq is kept"
    );
}

async fn a_resent_message_id_is_stored_once(store: &dyn HistoryStore) {
    let r = RoomId::generate();
    let a = UserId::generate();
    let original = msg(&r, 1, &a, "c1", "hello");
    ok(
        store.append_events(std::slice::from_ref(&original)).await,
        "append",
    );
    let resent = msg(&r, 2, &a, "c1", "hello");
    assert_eq!(
        ok(store.append_events(&[resent]).await, "append resent"),
        0,
        "append: a message reusing (room, from, cmid) under a new seq is ignored"
    );
    let found = ok(
        store.find_message(&r, &a, &cmid("c1")).await,
        "find_message",
    );
    assert_eq!(
        found,
        Some(original),
        "append: the first message with that cmid is kept"
    );
}

async fn last_seq_is_the_highest_stored_per_room(store: &dyn HistoryStore) {
    let (r1, r2) = (RoomId::generate(), RoomId::generate());
    let a = UserId::generate();
    assert_eq!(
        ok(store.last_seq(&r1).await, "last_seq"),
        0,
        "last_seq: 0 for an empty room"
    );
    ok(
        store
            .append_events(&[
                msg(&r1, 2, &a, "c2", "x"),
                msg(&r1, 1, &a, "c1", "y"),
                msg(&r2, 7, &a, "c1", "z"),
            ])
            .await,
        "append",
    );
    assert_eq!(
        ok(store.last_seq(&r1).await, "last_seq r1"),
        2,
        "last_seq: highest seq of r1"
    );
    assert_eq!(
        ok(store.last_seq(&r2).await, "last_seq r2"),
        7,
        "last_seq: per room"
    );
}

async fn messages_are_found_by_sender_and_client_id(store: &dyn HistoryStore) {
    let r = RoomId::generate();
    let (a, b) = (UserId::generate(), UserId::generate());
    let m = msg(&r, 2, &a, "c1", "hi");
    ok(
        store
            .append_events(&[member(&r, 1, &a, MemberOp::Join), m.clone()])
            .await,
        "append",
    );
    let found = ok(
        store.find_message(&r, &a, &cmid("c1")).await,
        "find_message",
    );
    assert_eq!(found, Some(m), "find_message: by (room, from, cmid)");
    for (room, from, id, why) in [
        (&r, &b, "c1", "another sender"),
        (&r, &a, "c2", "another cmid"),
        (&RoomId::generate(), &a, "c1", "another room"),
    ] {
        let got = ok(
            store.find_message(room, from, &cmid(id)).await,
            "find_message",
        );
        assert_eq!(got, None, "find_message: nothing for {why}");
    }
    let page = ok(
        store
            .page(
                &r,
                PageRange {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await,
        "page",
    );
    assert_eq!(seqs(&page.events), vec![1, 2]);
}

async fn rooms_are_counted_per_member_and_per_creator(store: &dyn HistoryStore) {
    let (a, b) = (UserId::generate(), UserId::generate());
    for (i, at) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
        let r = Room {
            id: RoomId::generate(),
            name: format!("r{i}"),
            created_by: a.clone(),
            created_at: at,
        };
        ok(store.create_room(&r).await, "create_room");
        ok(store.add_member(&r.id, &a, at).await, "add_member");
        if i == 0 {
            ok(store.add_member(&r.id, &b, at).await, "add_member b");
        }
    }
    assert_eq!(ok(store.room_count_of(&a).await, "count a"), 3);
    assert_eq!(ok(store.room_count_of(&b).await, "count b"), 1);
    assert_eq!(
        ok(store.room_count_of(&UserId::generate()).await, "count"),
        0
    );
    assert_eq!(ok(store.rooms_created_since(&a, 2_000).await, "since"), 2);
    assert_eq!(ok(store.rooms_created_since(&a, 3_001).await, "since"), 0);
    assert_eq!(
        ok(store.rooms_created_since(&b, 0).await, "since b"),
        0,
        "b created none: joining is not creating"
    );
}
