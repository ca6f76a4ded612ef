//! `svc.history.*` request/reply over a real nats-server: rooms, membership
//! with member events, pages, errors, and persistence across restarts.

mod common;

use chat_core::events::{EventBody, MemberOp};
use chat_core::names::svc;
use chat_core::svc::{
    ErrorCode, MAX_PAGE_LIMIT, Members, Membership, MembershipReply, Page, PageQuery, Reply, Room,
    RoomCreate, RoomRef, UserRef, UserRooms,
};
use chat_core::{RoomId, UserId};
use common::{Harness, WAIT, cmid, user};

fn ok<T: std::fmt::Debug>(r: Reply<T>, what: &str) -> T {
    r.into_result()
        .unwrap_or_else(|e| panic!("{what}: error reply {e:?}"))
}

fn code<T: std::fmt::Debug>(r: Reply<T>) -> ErrorCode {
    match r {
        Reply::Error(e) => e.code,
        Reply::Ok(v) => panic!("expected an error reply, got ok {v:?}"),
    }
}

async fn create(h: &Harness, by: &UserId, name: &str) -> Reply<MembershipReply> {
    let q = RoomCreate {
        v: 1,
        by: by.clone(),
        name: name.into(),
    };
    h.request(svc::HISTORY_ROOM_CREATE, &q).await
}

fn membership(room: &RoomId, u: &UserId) -> Membership {
    Membership {
        v: 1,
        room: room.clone(),
        user: u.clone(),
    }
}

fn page_q(room: &RoomId, after: Option<u64>, before: Option<u64>, limit: u32) -> PageQuery {
    PageQuery {
        v: 1,
        room: room.clone(),
        before,
        after,
        limit,
    }
}

/// Every member event of `room` in the room stream, in stream order.
async fn member_events(h: &Harness, room: &RoomId) -> Vec<chat_core::events::RoomEvent> {
    let subject = chat_core::names::stored_room_filter(room, chat_core::names::EventKind::Member);
    let stream =
        h.js.get_stream(chat_core::names::ROOM_STREAM)
            .await
            .expect("room stream");
    let mut out = Vec::new();
    let mut next = 1;
    while let Ok(m) = stream
        .direct_get_next_for_subject(subject.as_str(), Some(next))
        .await
    {
        next = m.sequence + 1;
        out.push(serde_json::from_slice(&m.payload).expect("room event"));
    }
    out
}

/// Waits until history holds `n` events of `room` and returns the page.
async fn wait_for_events(h: &Harness, room: &RoomId, n: usize) -> Page {
    chat_testkit::eventually(WAIT, "events to reach history", || async {
        let p: Page = h
            .request(
                svc::HISTORY_PAGE,
                &page_q(room, Some(0), None, MAX_PAGE_LIMIT),
            )
            .await
            .into_result()
            .ok()?;
        (p.events.len() >= n).then_some(p)
    })
    .await
}

#[tokio::test]
async fn create_join_and_leave_reply_and_append_member_events_with_consecutive_seqs() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let (alice, bob) = (user("alice"), user("bob"));

    let created = ok(create(&h, &alice, "  Team  ").await, "create");
    let room = created.room.clone();
    assert_eq!(room.name, "Team", "name is trimmed");
    assert_eq!(room.created_by, alice);
    assert!(created.changed);
    assert_eq!(
        created.seq,
        Some(0),
        "membership events take no number: positioned before the first message"
    );

    let joined: MembershipReply = ok(
        h.request(svc::HISTORY_ROOM_JOIN, &membership(&room.id, &bob))
            .await,
        "join",
    );
    assert_eq!((joined.changed, joined.seq), (true, Some(0)));
    let again: MembershipReply = ok(
        h.request(svc::HISTORY_ROOM_JOIN, &membership(&room.id, &bob))
            .await,
        "join again",
    );
    assert_eq!(
        (again.changed, again.seq),
        (false, None),
        "re-join changes nothing"
    );

    let members: Members = ok(
        h.request(
            svc::HISTORY_ROOM_MEMBERS,
            &RoomRef {
                v: 1,
                room: room.id.clone(),
            },
        )
        .await,
        "members",
    );
    assert_eq!(members.members, vec![alice.clone(), bob.clone()]);
    let rooms: UserRooms = ok(
        h.request(
            svc::HISTORY_USER_ROOMS,
            &UserRef {
                v: 1,
                user: bob.clone(),
            },
        )
        .await,
        "rooms",
    );
    assert_eq!(rooms.rooms, vec![room.id.clone()]);

    let left: MembershipReply = ok(
        h.request(svc::HISTORY_ROOM_LEAVE, &membership(&room.id, &bob))
            .await,
        "leave",
    );
    assert_eq!((left.changed, left.seq), (true, Some(0)));
    let r: Reply<MembershipReply> = h
        .request(svc::HISTORY_ROOM_LEAVE, &membership(&room.id, &bob))
        .await;
    assert_eq!(code(r), ErrorCode::NotMember);
    let rooms: UserRooms = ok(
        h.request(
            svc::HISTORY_USER_ROOMS,
            &UserRef {
                v: 1,
                user: bob.clone(),
            },
        )
        .await,
        "rooms",
    );
    assert!(rooms.rooms.is_empty(), "bob left");

    let got: Room = ok(
        h.request(
            svc::HISTORY_ROOM_GET,
            &RoomRef {
                v: 1,
                room: room.id.clone(),
            },
        )
        .await,
        "get",
    );
    assert_eq!(got, room);

    // The member events are in the room stream, in order.
    let entries: Vec<(u64, UserId, UserId, MemberOp)> = member_events(&h, &room.id)
        .await
        .iter()
        .map(|e| match &e.body {
            EventBody::Member { user, op } => (e.seq, e.from.clone(), user.clone(), *op),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (0, alice.clone(), alice.clone(), MemberOp::Join),
            (0, bob.clone(), bob.clone(), MemberOp::Join),
            (0, bob.clone(), bob.clone(), MemberOp::Leave),
        ]
    );
    // History stores messages only: no member event reaches its pages.
    let p: Page = ok(
        h.request(svc::HISTORY_PAGE, &page_q(&room.id, None, None, 10))
            .await,
        "page",
    );
    assert!(p.events.is_empty(), "{p:?}");
    // The writer did not re-apply membership from the events.
    let members: Members = ok(
        h.request(
            svc::HISTORY_ROOM_MEMBERS,
            &RoomRef {
                v: 1,
                room: room.id.clone(),
            },
        )
        .await,
        "members",
    );
    assert_eq!(members.members, vec![alice]);
    app.stop().await;
}

#[tokio::test]
async fn room_names_must_have_1_to_100_characters_after_trimming() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let a = user("alice");
    assert_eq!(code(create(&h, &a, "   ").await), ErrorCode::BadRequest);
    assert_eq!(
        code(create(&h, &a, &"x".repeat(101)).await),
        ErrorCode::BadRequest
    );
    let max = ok(create(&h, &a, &"é".repeat(100)).await, "100 chars");
    assert_eq!(max.room.name.chars().count(), 100);
    let rooms: UserRooms = ok(
        h.request(svc::HISTORY_USER_ROOMS, &UserRef { v: 1, user: a })
            .await,
        "rooms",
    );
    assert_eq!(
        rooms.rooms,
        vec![max.room.id],
        "rejected creates left no room"
    );
    app.stop().await;
}

#[tokio::test]
async fn requests_about_unknown_rooms_are_not_found() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let (room, u) = (RoomId::generate(), user("alice"));
    let r: Reply<MembershipReply> = h
        .request(svc::HISTORY_ROOM_JOIN, &membership(&room, &u))
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let r: Reply<MembershipReply> = h
        .request(svc::HISTORY_ROOM_LEAVE, &membership(&room, &u))
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let r: Reply<Room> = h
        .request(
            svc::HISTORY_ROOM_GET,
            &RoomRef {
                v: 1,
                room: room.clone(),
            },
        )
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let r: Reply<Members> = h
        .request(
            svc::HISTORY_ROOM_MEMBERS,
            &RoomRef {
                v: 1,
                room: room.clone(),
            },
        )
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    let r: Reply<Page> = h
        .request(svc::HISTORY_PAGE, &page_q(&room, None, None, 10))
        .await;
    assert_eq!(code(r), ErrorCode::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_malformed_errors() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    for subject in [
        svc::HISTORY_ROOM_CREATE,
        svc::HISTORY_ROOM_JOIN,
        svc::HISTORY_ROOM_LEAVE,
        svc::HISTORY_ROOM_GET,
        svc::HISTORY_ROOM_MEMBERS,
        svc::HISTORY_USER_ROOMS,
        svc::HISTORY_PAGE,
    ] {
        for body in [
            &b"{"[..],
            br#"{"v":1}"#,
            br#"{"v":1,"room":"bad.id","user":"bad.id","by":"bad.id","name":"n","limit":1}"#,
        ] {
            let r: Reply<serde_json::Value> = h.request_raw(subject, body.to_vec()).await;
            assert_eq!(
                code(r),
                ErrorCode::Malformed,
                "{subject} with {}",
                String::from_utf8_lossy(body)
            );
        }
    }
    app.stop().await;
}

/// (after, before, limit, expected seqs, expected more).
type PageCase = (Option<u64>, Option<u64>, u32, Vec<u64>, bool);

#[tokio::test]
async fn pages_over_nats_respect_before_after_limit_and_more() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let alice = user("alice");
    let room = ok(create(&h, &alice, "paged").await, "create").room.id;
    for i in 1..=10 {
        let body = EventBody::Msg {
            cmid: cmid(&format!("c{i}")),
            text: format!("m{i}"),
        };
        let a = h
            .log
            .append(&room, &alice, body, None)
            .await
            .expect("append");
        assert_eq!(a.event.seq, i);
    }
    wait_for_events(&h, &room, 10).await;
    let cases: [PageCase; 6] = [
        (None, None, 3, vec![8, 9, 10], true),
        (None, Some(8), 3, vec![5, 6, 7], true),
        (Some(2), None, 3, vec![3, 4, 5], true),
        (Some(7), None, 5, vec![8, 9, 10], false),
        (Some(2), Some(5), 10, vec![3, 4], false),
        (None, None, MAX_PAGE_LIMIT, (1..=10).collect(), false),
    ];
    for (after, before, limit, want, more) in cases {
        let p: Page = ok(
            h.request(svc::HISTORY_PAGE, &page_q(&room, after, before, limit))
                .await,
            "page",
        );
        let seqs: Vec<u64> = p.events.iter().map(|e| e.seq).collect();
        assert_eq!(
            (seqs, p.more),
            (want, more),
            "after={after:?} before={before:?} limit={limit}"
        );
        assert_eq!(p.room, room);
    }
    for limit in [0, MAX_PAGE_LIMIT + 1] {
        let r: Reply<Page> = h
            .request(svc::HISTORY_PAGE, &page_q(&room, None, None, limit))
            .await;
        assert_eq!(code(r), ErrorCode::BadRequest, "limit {limit}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_database_keeps_rooms_members_and_history() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let (alice, bob) = (user("alice"), user("bob"));
    let room = ok(create(&h, &alice, "durable").await, "create").room;
    let _: MembershipReply = ok(
        h.request(svc::HISTORY_ROOM_JOIN, &membership(&room.id, &bob))
            .await,
        "join",
    );
    for (i, text) in ["one", "two"].iter().enumerate() {
        h.log
            .append(
                &room.id,
                &alice,
                EventBody::Msg {
                    cmid: cmid(&format!("m{i}")),
                    text: (*text).to_string(),
                },
                None,
            )
            .await
            .expect("append");
    }
    let before = wait_for_events(&h, &room.id, 2).await;
    app.stop().await;

    let app = h.spawn().await;
    let got: Room = ok(
        h.request(
            svc::HISTORY_ROOM_GET,
            &RoomRef {
                v: 1,
                room: room.id.clone(),
            },
        )
        .await,
        "get",
    );
    assert_eq!(got, room);
    let members: Members = ok(
        h.request(
            svc::HISTORY_ROOM_MEMBERS,
            &RoomRef {
                v: 1,
                room: room.id.clone(),
            },
        )
        .await,
        "members",
    );
    assert_eq!(members.members, vec![alice.clone(), bob.clone()]);
    let after: Page = ok(
        h.request(svc::HISTORY_PAGE, &page_q(&room.id, Some(0), None, 10))
            .await,
        "page",
    );
    assert_eq!(after.events, before.events);
    // Sequencing continues from the stream after the restart.
    let left: MembershipReply = ok(
        h.request(svc::HISTORY_ROOM_LEAVE, &membership(&room.id, &bob))
            .await,
        "leave",
    );
    assert_eq!(left.seq, Some(2), "positioned after the last message");
    app.stop().await;
}

#[tokio::test]
async fn room_creation_is_rate_limited_per_user_and_memberships_are_capped() {
    let h = Harness::start().await;
    let mut config = h.config();
    config.rooms.created_per_hour = 3;
    config.rooms.max_per_user = 4;
    let app = h.spawn_with(config).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a_rooms = Vec::new();
    for i in 0..3 {
        a_rooms.push(
            ok(create(&h, &alice, &format!("a{i}")).await, "create")
                .room
                .id,
        );
    }
    // The fourth room within the hour is refused, for alice only; the
    // count lives in the store, so every history instance agrees.
    assert_eq!(code(create(&h, &alice, "a3").await), ErrorCode::RateLimited);
    let mut b_rooms = Vec::new();
    for i in 0..3 {
        b_rooms.push(
            ok(create(&h, &bob, &format!("b{i}")).await, "bob creates")
                .room
                .id,
        );
    }
    let h = &h;
    let join = |room: &RoomId| {
        let q = membership(room, &bob);
        async move {
            h.request::<_, MembershipReply>(svc::HISTORY_ROOM_JOIN, &q)
                .await
        }
    };
    assert!(ok(join(&a_rooms[0]).await, "fourth room").changed);
    // A fifth membership is over the cap...
    assert_eq!(code(join(&a_rooms[1]).await), ErrorCode::LimitReached);
    // ...but re-joining a room bob is in changes nothing and is fine.
    assert!(!ok(join(&a_rooms[0]).await, "already a member").changed);
    let leave: Reply<MembershipReply> = h
        .request(svc::HISTORY_ROOM_LEAVE, &membership(&b_rooms[0], &bob))
        .await;
    ok(leave, "leave");
    assert!(ok(join(&a_rooms[1]).await, "room for one more").changed);
    app.stop().await;
}
