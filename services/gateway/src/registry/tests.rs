//! The registry's unit tests: session limits, heads, paging, deliveries.

use chat_core::events::{DeliveryKind, Head, MembershipChange};

use super::*;

fn handle(depth: usize) -> (SessionHandle, crate::queue::Receiver<Out>) {
    let (tx, rx) = crate::queue::bounded(depth);
    let h = SessionHandle {
        tx,
        kill: CancellationToken::new(),
        close_reason: Arc::new(Mutex::new(None)),
        sid: Arc::new(Mutex::new(None)),
    };
    (h, rx)
}

fn ids(s: &str) -> (UserId, RoomId) {
    (
        UserId::parse(s).expect("user"),
        RoomId::parse(format!("r{s}")).expect("room"),
    )
}

#[test]
fn a_user_gets_at_most_the_configured_sessions() {
    let reg = Registry::default();
    let (user, room) = ids("a");
    for id in 0..2 {
        let (h, _rx) = handle(4);
        assert_eq!(
            reg.add(
                &user,
                id,
                h,
                vec![room.clone()],
                2,
                reg.watch_changes(&user)
            ),
            Ok(id == 0)
        );
    }
    let (h, _rx) = handle(4);
    assert_eq!(
        reg.add(&user, 9, h, vec![], 2, reg.watch_changes(&user)),
        Err(AddError::TooManySessions(2))
    );
    assert!(!reg.remove(&user, 0), "session 1 is still there");
    let (h, _rx) = handle(4);
    assert!(
        reg.add(&user, 9, h, vec![], 2, reg.watch_changes(&user))
            .is_ok(),
        "a freed place is reusable"
    );
}

#[test]
fn heads_are_dropped_at_a_half_full_queue_and_never_close_the_session() {
    let reg = Registry::default();
    let (user, room) = ids("b");
    let (h, _rx) = handle(4);
    let (kill, tx) = (h.kill.clone(), h.tx.clone());
    reg.add(&user, 1, h, vec![room.clone()], 4, reg.watch_changes(&user))
        .expect("added");
    let head = Head {
        room,
        seq: 3,
        users: vec![user],
    };
    assert_eq!(reg.head(&head), 1);
    assert_eq!(reg.head(&head), 1);
    assert_eq!(reg.head(&head), 0, "half full: the head is dropped");
    assert!(!kill.is_cancelled(), "a head never closes a session");
    assert!(
        tx.try_send(Out::Forget(ids("x").1)).is_ok(),
        "room left for real work"
    );
}

#[test]
fn rooms_are_paged_by_id() {
    let reg = Registry::default();
    let user = UserId::parse("c").expect("user");
    let rooms: Vec<RoomId> = ["r3", "r1", "r2"]
        .iter()
        .map(|r| RoomId::parse(*r).expect("room"))
        .collect();
    let (h, _rx) = handle(4);
    reg.add(&user, 1, h, rooms.clone(), 4, reg.watch_changes(&user))
        .expect("added");
    let (first, more) = reg.rooms_page(&user, None, 2);
    assert_eq!((first.len(), more), (2, true));
    assert_eq!(first[0].as_str(), "r1");
    let (rest, more) = reg.rooms_page(&user, first.last(), 2);
    assert_eq!(rest.iter().map(RoomId::as_str).collect::<Vec<_>>(), ["r3"]);
    assert!(!more);
}

#[test]
fn a_delivery_whose_fields_do_not_match_its_kind_is_refused() {
    let reg = Registry::default();
    let (user, room) = ids("d");
    let (h, mut rx) = handle(8);
    reg.add(&user, 1, h, vec![room.clone()], 4, reg.watch_changes(&user))
        .expect("added");
    let d = Delivery {
        v: 1,
        kind: DeliveryKind::Presence,
        users: vec![user],
        frame: "{}".into(),
        room: Some(room),
        seq: Some(1),
        membership: None,
        to_room: false,
    };
    assert!(reg.deliver(d).is_err());
    assert!(rx.try_recv().is_none(), "nothing queued");
}

fn delivery(kind: DeliveryKind, room: &RoomId, seq: u64, users: Vec<UserId>) -> Delivery {
    Delivery {
        v: 1,
        kind,
        users,
        frame: "{}".into(),
        room: Some(room.clone()),
        seq: Some(seq),
        membership: None,
        to_room: true,
    }
}

fn change(room: &RoomId, user: &UserId, op: MemberOp) -> Delivery {
    Delivery {
        membership: Some(MembershipChange {
            room: room.clone(),
            user: user.clone(),
            op,
        }),
        ..delivery(DeliveryKind::Member, room, 0, vec![user.clone()])
    }
}

#[test]
fn room_wide_deliveries_reach_the_rooms_connected_members_and_a_leaver() {
    let reg = Registry::default();
    let (alice, room) = ids("a");
    let (bob, _) = ids("b");
    let (carol, _) = ids("c");
    let (dave, _) = ids("d");
    let mut rx = Vec::new();
    for (i, (user, rooms)) in [
        (&alice, vec![room.clone()]),
        (&bob, vec![room.clone()]),
        (&carol, vec![]),
        (&dave, vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let (h, r) = handle(16);
        reg.add(user, i as u64, h, rooms, 4, reg.watch_changes(user))
            .expect("added");
        rx.push(r);
    }
    let msg = |seq| delivery(DeliveryKind::Msg, &room, seq, vec![]);
    assert_eq!(reg.deliver(msg(1)), Ok(2), "alice and bob");
    assert!(rx[2].try_recv().is_none(), "carol is no member");
    assert_eq!(
        reg.deliver(change(&room, &bob, MemberOp::Leave)),
        Ok(2),
        "the leaver gets its own leave"
    );
    assert_eq!(reg.deliver(msg(2)), Ok(1), "only alice now");
    assert_eq!(
        reg.deliver(change(&room, &dave, MemberOp::Join)),
        Ok(2),
        "the joiner gets its own join"
    );
    assert_eq!(reg.deliver(msg(3)), Ok(2), "alice and dave");
    assert!(reg.remove(&alice, 0), "alice's last session");
    assert_eq!(reg.members_of(&room), 1, "dave only");
    assert!(reg.remove(&dave, 3));
    assert_eq!(reg.members_of(&room), 0, "the room's entry is gone");
    assert_eq!(reg.deliver(msg(4)), Ok(0));
}

#[test]
fn changes_while_a_session_starts_are_applied_when_it_is_added() {
    let reg = Registry::default();
    let (user, left) = ids("e");
    let (_, joined) = ids("f");
    let watch = reg.watch_changes(&user);
    // Delivered while the rooms were being read (the user is not
    // registered yet): a leave of a room the read still lists, and a join
    // it does not.
    reg.set_member(&user, &left, MemberOp::Leave);
    reg.set_member(&user, &joined, MemberOp::Join);
    let (h, _rx) = handle(4);
    reg.add(&user, 1, h, vec![left.clone()], 4, watch)
        .expect("added");
    assert!(!reg.is_member(&user, &left), "the leave is not lost");
    assert!(reg.is_member(&user, &joined), "the join is not lost");
    assert_eq!(reg.members_of(&left), 0);
    assert_eq!(reg.members_of(&joined), 1);
    // Without a watch (as before), a change to an unregistered user is
    // dropped; and a dropped watch records nothing more.
    let (other, _) = ids("g");
    drop(reg.watch_changes(&other));
    reg.set_member(&other, &joined, MemberOp::Join);
    let (h, _rx) = handle(4);
    reg.add(&other, 2, h, vec![], 4, reg.watch_changes(&other))
        .expect("added");
    assert!(!reg.is_member(&other, &joined));
}

#[test]
fn a_watch_that_overflows_makes_the_session_start_again() {
    let reg = Registry::default();
    let (user, _) = ids("h");
    let (early, _) = ids("i");
    let watch = reg.watch_changes(&early);
    for i in 0..MAX_WATCHED_CHANGES {
        let room = RoomId::parse(format!("r{i}")).expect("room");
        reg.set_member(&early, &room, MemberOp::Join);
    }
    let (h, _rx) = handle(4);
    assert_eq!(
        reg.add(&early, 9, h, vec![], 4, watch),
        Ok(true),
        "exactly the limit is kept"
    );
    let watch = reg.watch_changes(&user);
    for i in 0..=MAX_WATCHED_CHANGES {
        let room = RoomId::parse(format!("r{i}")).expect("room");
        reg.set_member(&user, &room, MemberOp::Join);
    }
    let (h, _rx) = handle(4);
    assert_eq!(
        reg.add(&user, 1, h, vec![], 4, watch),
        Err(AddError::MissedChanges)
    );
    assert_eq!(reg.sessions_of(&user), 0, "not registered");
    let (h, _rx) = handle(4);
    let watch = reg.watch_changes(&user);
    assert!(
        reg.add(&user, 2, h, vec![], 4, watch).is_ok(),
        "a new start works"
    );
}
