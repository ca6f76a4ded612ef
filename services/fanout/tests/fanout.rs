//! The fanout service against a real nats-server. Presence state is written
//! straight into the presence bucket (the documented contract); the history
//! service is stood in for by a responder on its `svc.history.*` subjects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chat_core::events::{Delivery, EventBody, MemberOp, PresenceChange, PresenceStatus, RoomEvent};
use chat_core::names;
use chat_core::svc::{ErrorCode, Members, Reply, RoomRef, SvcError, UserRef, UserRooms};
use chat_core::wire::ServerFrame;
use chat_core::{ClientMsgId, GatewayId, RoomId, SCHEMA_VERSION, UserId};
use chat_platform::Shutdown;
use chat_platform::config::MapSource;
use chat_stream::{RoomLog, StreamSettings, setup};
use chat_testkit::{NatsServer, eventually, within};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);
/// Gateway of the sentinel user; deliveries there mark "everything before
/// has been published".
const SENTINEL_GW: &str = "gz";

fn u(s: &str) -> UserId {
    UserId::parse(s).expect("valid user id")
}
fn r(s: &str) -> RoomId {
    RoomId::parse(s).expect("valid room id")
}
fn g(s: &str) -> GatewayId {
    GatewayId::parse(s).expect("valid gateway id")
}

/// What the stand-in history service knows.
#[derive(Default)]
struct Directory {
    members: HashMap<RoomId, Vec<UserId>>,
    /// Member requests to refuse before answering.
    fail_members: usize,
    member_requests: usize,
}

impl Directory {
    fn rooms_of(&self, user: &UserId) -> Vec<RoomId> {
        let mut rooms: Vec<_> = self
            .members
            .iter()
            .filter(|(_, m)| m.contains(user))
            .map(|(r, _)| r.clone())
            .collect();
        rooms.sort();
        rooms
    }
}

struct App {
    _nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    log: RoomLog,
    presence: kv::Store,
    directory: Arc<Mutex<Directory>>,
    deliveries: async_nats::Subscriber,
    /// Deliveries of a coalesced message not yet taken.
    pending: std::collections::VecDeque<(GatewayId, Delivery)>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    addr: SocketAddr,
}

async fn spawn_app() -> App {
    spawn_app_with(&[]).await
}

async fn spawn_app_with(extra: &[(&str, &str)]) -> App {
    chat_platform::telemetry::init_for_tests();
    let nats = NatsServer::start().await.expect("nats-server starts");
    let client = nats.admin_client().await.expect("connect");
    let js = jetstream::new(client.clone());
    // One partition: the sentinel room's event is handled after every
    // earlier event of every room (with several, partitions run side by
    // side and only each room's own order holds).
    let settings = StreamSettings {
        partitions: 1,
        ..StreamSettings::default()
    };
    // The presence service owns the bucket; fanout waits for it to exist.
    let presence = setup::presence_bucket(&js, &settings)
        .await
        .expect("presence bucket");
    let stream = setup::room_stream(&js, &settings)
        .await
        .expect("room stream");
    let log = RoomLog::new(js.clone(), stream);

    let directory = Arc::new(Mutex::new(Directory::default()));
    spawn_history(client.clone(), directory.clone()).await;

    // One wildcard subscription keeps deliveries in the order fanout
    // published them (separate subscriptions would not).
    let deliveries = client
        .subscribe("gw.*.deliver")
        .await
        .expect("subscribe deliveries");

    let mut src = MapSource::new()
        .with("CHAT_NATS_URL", nats.url())
        .with_all(chat_testkit::service_env(chat_testkit::Role::Fanout))
        .with("CHAT_FANOUT_BATCH", "16");
    for (k, v) in extra {
        src = src.with(k, *v);
    }
    let config = chat_fanout::Config::from_source(&src).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chat_fanout::run(config, listener, shutdown.clone()));
    let mut app = App {
        _nats: nats,
        client,
        js,
        log,
        presence,
        directory,
        deliveries,
        pending: Default::default(),
        shutdown,
        task,
        addr,
    };
    app.online("sentinel", SENTINEL_GW).await;
    app.set_members("rsentinel", &["sentinel", "watcher"]);
    app.wait_relay_subscribed().await;
    app
}

/// Answers `svc.history.room.members` and `svc.history.user.rooms` from
/// `dir`, refusing `fail_members` member requests first.
async fn spawn_history(client: async_nats::Client, dir: Arc<Mutex<Directory>>) {
    let mut sub = client
        .subscribe(names::svc::HISTORY_ALL)
        .await
        .expect("subscribe history");
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let body = {
                let mut d = dir.lock().expect("directory lock");
                match msg.subject.as_str() {
                    names::svc::HISTORY_ROOM_MEMBERS => {
                        let req: RoomRef = serde_json::from_slice(&msg.payload).expect("RoomRef");
                        d.member_requests += 1;
                        let reply = if d.fail_members > 0 {
                            d.fail_members -= 1;
                            Reply::Error(SvcError::new(ErrorCode::Unavailable, "store down"))
                        } else {
                            Reply::Ok(Members {
                                room: req.room.clone(),
                                members: d.members.get(&req.room).cloned().unwrap_or_default(),
                            })
                        };
                        serde_json::to_vec(&reply)
                    }
                    names::svc::HISTORY_USER_ROOMS => {
                        let req: UserRef = serde_json::from_slice(&msg.payload).expect("UserRef");
                        serde_json::to_vec(&Reply::Ok(UserRooms {
                            rooms: d.rooms_of(&req.user),
                            user: req.user,
                        }))
                    }
                    other => panic!("unexpected history request {other}"),
                }
            }
            .expect("encode reply");
            if client.publish(reply_to, body.into()).await.is_err() {
                break;
            }
        }
    });
}

impl App {
    /// Marks `user` connected to `gw` in the presence bucket.
    async fn online(&self, user: &str, gw: &str) {
        let key = names::presence_key(&u(user), &g(gw));
        self.presence
            .put(key, "{}".into())
            .await
            .expect("presence put");
    }

    fn set_members(&self, room: &str, users: &[&str]) {
        let mut d = self.directory.lock().expect("directory lock");
        d.members
            .insert(r(room), users.iter().map(|s| u(s)).collect());
    }

    async fn append(&self, room: &str, from: &str, body: EventBody) -> RoomEvent {
        self.log
            .append(&r(room), &u(from), body, None)
            .await
            .expect("append")
            .event
    }

    async fn say(&self, room: &str, from: &str, text: &str) -> RoomEvent {
        let body = EventBody::Msg {
            cmid: ClientMsgId::generate(),
            text: text.into(),
        };
        self.append(room, from, body).await
    }

    async fn member(&self, room: &str, user: &str, op: MemberOp) -> RoomEvent {
        let body = EventBody::Member { user: u(user), op };
        self.append(room, user, body).await
    }

    async fn next_delivery(&mut self) -> (GatewayId, Delivery) {
        if let Some(next) = self.pending.pop_front() {
            return next;
        }
        let msg = within(WAIT, "a delivery", self.deliveries.next())
            .await
            .expect("subscriptions open");
        let gw = msg
            .subject
            .as_str()
            .strip_prefix("gw.")
            .and_then(|s| s.strip_suffix(".deliver"))
            .map(g)
            .expect("gw.<id>.deliver");
        let mut all = Delivery::decode_all(&msg.payload).expect("valid deliveries");
        assert!(!all.is_empty(), "an empty coalesced delivery");
        let first = all.remove(0);
        self.pending
            .extend(all.into_iter().map(|d| (gw.clone(), d)));
        (gw, first)
    }

    /// Publishes a sentinel room event and returns every delivery published
    /// before it: fanout handles events in order, so that is all of them.
    async fn deliveries_before_room_sentinel(&mut self) -> Vec<(GatewayId, Delivery)> {
        self.say("rsentinel", "watcher", "sentinel").await;
        self.collect_until_sentinel().await
    }

    async fn collect_until_sentinel(&mut self) -> Vec<(GatewayId, Delivery)> {
        let mut out = Vec::new();
        loop {
            let (gw, d) = self.next_delivery().await;
            if gw == g(SENTINEL_GW) {
                return out;
            }
            out.push((gw, d));
        }
    }

    async fn presence_change(&self, user: &str, status: PresenceStatus) {
        let change = PresenceChange {
            v: SCHEMA_VERSION,
            user: u(user),
            status,
            at: 1,
        };
        let body = serde_json::to_vec(&change).expect("encode");
        self.client
            .publish(names::presence_user(&u(user)), body.into())
            .await
            .expect("publish change");
    }

    /// `user` goes offline; returns the relay's deliveries (the watcher's
    /// change after it marks the end).
    async fn relay_offline(&mut self, user: &str) -> Vec<(GatewayId, Delivery)> {
        self.presence_change(user, PresenceStatus::Offline).await;
        self.presence_change("watcher", PresenceStatus::Online)
            .await;
        self.collect_until_sentinel().await
    }

    /// Publishes the watcher's presence until the sentinel (its co-member)
    /// gets it: from then on the relay is subscribed.
    async fn wait_relay_subscribed(&mut self) {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(tokio::time::Instant::now() < end, "relay never subscribed");
            self.presence_change("watcher", PresenceStatus::Online)
                .await;
            let got =
                tokio::time::timeout(Duration::from_millis(300), self.deliveries.next()).await;
            if let Ok(Some(msg)) = got {
                let all = Delivery::decode_all(&msg.payload).expect("deliveries");
                if all.iter().any(|d| d.room.is_none()) {
                    break;
                }
            }
        }
        // Swallow late copies of the probe.
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), self.deliveries.next()).await
        {}
    }

    async fn metrics(&self) -> String {
        let mut conn = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut resp = String::new();
        conn.read_to_string(&mut resp).await.expect("read");
        resp
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within(WAIT, "fanout to stop", self.task)
            .await
            .expect("task joins")
            .expect("run returns Ok");
    }
}

fn event_frame(ev: &RoomEvent) -> String {
    serde_json::to_string(&ServerFrame::Event(ev.clone())).expect("encode frame")
}

/// Deliveries of one event (membership events share the sequence of the
/// message before them, so the kind tells them apart).
/// Each delivery's gateway and users, sorted.
fn targets_of(got: &[(GatewayId, Delivery)]) -> Vec<(String, Vec<UserId>)> {
    let mut targets: Vec<_> = got
        .iter()
        .map(|(gw, d)| (gw.to_string(), d.users.clone()))
        .collect();
    targets.sort();
    targets
}

fn by_gateway(ds: &[(GatewayId, Delivery)], ev: &RoomEvent) -> Vec<(String, Vec<UserId>)> {
    let is_member = matches!(ev.body, EventBody::Member { .. });
    let mut out: Vec<_> = ds
        .iter()
        .filter(|(_, d)| d.seq == Some(ev.seq) && d.membership.is_some() == is_member)
        .map(|(gw, d)| (gw.to_string(), d.users.clone()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_event_reaches_each_gateway_of_online_members_once_with_all_its_recipients() {
    let mut app = spawn_app().await;
    app.set_members("r1", &["alice", "bob", "carol", "dave"]);
    app.online("alice", "g1").await;
    app.online("bob", "g1").await;
    app.online("carol", "g2").await;
    app.online("erin", "g3").await; // online, but not a member
    // dave is offline: skipped, he catches up from history.

    let ev = app.say("r1", "alice", "hello").await;
    let got = app.deliveries_before_room_sentinel().await;

    assert_eq!(
        by_gateway(&got, &ev),
        vec![
            ("g1".into(), vec![u("alice"), u("bob")]),
            ("g2".into(), vec![u("carol")]),
        ]
    );
    assert_eq!(got.len(), 2, "nothing else was delivered: {got:?}");
    for (_, d) in &got {
        assert_eq!(d.frame, event_frame(&ev));
        assert_eq!(d.room, Some(r("r1")));
        assert_eq!(d.membership, None);
        let frame: serde_json::Value = serde_json::from_str(&d.frame).expect("frame json");
        assert_eq!(frame["type"], "event");
        assert_eq!(frame["text"], "hello");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_join_adds_the_joiner_and_a_leave_still_reaches_the_leaver() {
    let mut app = spawn_app().await;
    // History only knows alice: frank's membership comes from the stream.
    app.set_members("r2", &["alice"]);
    app.online("alice", "g1").await;
    app.online("frank", "g2").await;

    let join = app.member("r2", "frank", MemberOp::Join).await;
    let during = app.say("r2", "alice", "welcome").await;
    let leave = app.member("r2", "frank", MemberOp::Leave).await;
    let after = app.say("r2", "alice", "bye").await;
    let got = app.deliveries_before_room_sentinel().await;

    let both = vec![
        ("g1".to_string(), vec![u("alice")]),
        ("g2".to_string(), vec![u("frank")]),
    ];
    assert_eq!(by_gateway(&got, &join), both, "the joiner gets its join");
    assert_eq!(
        by_gateway(&got, &during),
        both,
        "members include the joiner"
    );
    assert_eq!(by_gateway(&got, &leave), both, "the leaver gets its leave");
    assert_eq!(
        by_gateway(&got, &after),
        vec![("g1".to_string(), vec![u("alice")])],
        "the leaver is gone"
    );
    let membership = got
        .iter()
        .filter(|(gw, d)| *gw == g("g2") && d.seq == Some(leave.seq))
        .find_map(|(_, d)| d.membership.clone().filter(|m| m.op == MemberOp::Leave))
        .expect("leave delivery carries the membership change");
    assert_eq!(
        (membership.user, membership.op),
        (u("frank"), MemberOp::Leave)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_presence_change_is_relayed_to_co_members_only() {
    let mut app = spawn_app().await;
    app.set_members("r1", &["alice", "bob", "dave"]);
    app.set_members("r2", &["alice", "carol", "bob"]);
    app.set_members("r3", &["erin", "zed"]);
    for (user, gw) in [
        ("alice", "g1"),
        ("bob", "g1"),
        ("carol", "g2"),
        ("erin", "g3"),
    ] {
        app.online(user, gw).await;
    }

    let got = app.relay_offline("alice").await;
    let targets = targets_of(&got);
    assert_eq!(
        targets,
        vec![
            ("g1".to_string(), vec![u("bob")]),
            ("g2".to_string(), vec![u("carol")]),
        ],
        "alice herself and non-co-member erin get nothing"
    );
    let expected = serde_json::to_string(&ServerFrame::Presence {
        user: u("alice"),
        status: PresenceStatus::Offline,
    })
    .expect("encode");
    for (_, d) in &got {
        assert_eq!(d.frame, expected);
        assert_eq!((d.room.clone(), d.seq), (None, None));
    }
    app.stop().await;
}

#[tokio::test]
async fn presence_reaches_rooms_up_to_the_size_limit_and_not_larger_ones() {
    let mut app = spawn_app_with(&[("CHAT_FANOUT_PRESENCE_MAX_ROOM", "3")]).await;
    // r1 has exactly the limit; r2 one more.
    app.set_members("r1", &["alice", "bob", "carol"]);
    app.set_members("r2", &["alice", "dave", "erin", "frank"]);
    for (user, gw) in [
        ("alice", "g1"),
        ("bob", "g1"),
        ("carol", "g2"),
        ("dave", "g2"),
        ("erin", "g3"),
        ("frank", "g3"),
    ] {
        app.online(user, gw).await;
    }

    let got = app.relay_offline("alice").await;
    let targets = targets_of(&got);
    assert_eq!(
        targets,
        vec![
            ("g1".to_string(), vec![u("bob")]),
            ("g2".to_string(), vec![u("carol")]),
        ],
        "members of the room over the limit get nothing"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("chat_fanout_presence_large_rooms_skipped_total") && !l.ends_with(" 0")
        }),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_history_failure_delays_an_event_but_neither_drops_nor_reorders_it() {
    let mut app = spawn_app().await;
    app.set_members("r4", &["alice"]);
    app.online("alice", "g1").await;
    app.directory.lock().expect("lock").fail_members = 2;

    let ev = app.say("r4", "alice", "persistent").await;
    let later = app.say("r4", "alice", "in order").await;
    let (gw, d) = app.next_delivery().await;
    assert_eq!((gw, d.seq, d.room), (g("g1"), Some(ev.seq), Some(r("r4"))));
    let (_, d) = app.next_delivery().await;
    assert_eq!(
        d.seq,
        Some(later.seq),
        "the later event did not overtake it"
    );
    let requests = app.directory.lock().expect("lock").member_requests;
    assert!(requests >= 3, "two refusals, then an answer: {requests}");
    app.stop().await;
}

#[tokio::test]
async fn an_unparseable_event_is_terminated_and_counted_and_later_events_flow() {
    let mut app = spawn_app().await;
    app.set_members("r6", &["alice"]);
    app.online("alice", "g1").await;
    let garbage = app
        .js
        .publish(
            names::room_subject(&r("r5"), names::EventKind::Msg),
            "not json".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");

    let ev = app.say("r6", "alice", "after garbage").await;
    let got = app.deliveries_before_room_sentinel().await;
    assert_eq!(by_gateway(&got, &ev), vec![("g1".into(), vec![u("alice")])]);

    let stream = app.js.get_stream(names::ROOM_STREAM).await.expect("stream");
    eventually(WAIT, "the garbage to leave the pending set", || {
        let stream = stream.clone();
        async move {
            // The harness's stream has one partition.
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(&names::partition_durable(names::FANOUT_DURABLE, 0))
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.ack_floor.stream_sequence > garbage.sequence).then_some(())
        }
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chat_fanout_malformed_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_join_tells_the_online_members_the_joiner_is_online() {
    let mut app = spawn_app().await;
    app.set_members("r9", &["alice", "bob"]);
    app.online("alice", "g1").await;
    app.online("gina", "g3").await;
    // bob is a member but offline: nobody hears about him.
    // Fanout's view of the bucket catches up asynchronously: wait until a
    // message reaches both alice and gina before the join.
    app.set_members("r8", &["alice", "gina"]);
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        app.say("r8", "alice", "warm-up").await;
        let got = app.deliveries_before_room_sentinel().await;
        if got.iter().filter(|(_, d)| d.room == Some(r("r8"))).count() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "fanout never saw both online"
        );
    }

    app.member("r9", "gina", MemberOp::Join).await;
    // Only the online members hear of the joiner: the joining session is
    // told who is online by its gateway (`svc.fanout.presence.snapshot`).
    let presence: Vec<(String, Vec<UserId>, serde_json::Value)> = app
        .deliveries_before_room_sentinel()
        .await
        .into_iter()
        .filter(|(_, d)| d.seq.is_none())
        .map(|(gw, d)| {
            let frame: serde_json::Value = serde_json::from_str(&d.frame).expect("frame json");
            assert_eq!(frame["type"], "presence");
            assert_eq!(frame["status"], "online");
            (gw.to_string(), d.users.clone(), frame["user"].clone())
        })
        .collect();
    assert_eq!(
        presence,
        vec![(
            "g1".to_string(),
            vec![u("alice")],
            serde_json::json!("gina")
        )]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_room_evicted_from_a_full_member_cache_is_read_again_and_delivered_right() {
    let mut app = spawn_app_with(&[("CHAT_FANOUT_MEMBER_CACHE_ROOMS", "1")]).await;
    app.set_members("ra", &["alice"]);
    app.set_members("rb", &["bob"]);
    app.online("alice", "g1").await;
    app.online("bob", "g2").await;
    let before = app.directory.lock().expect("lock").member_requests;
    for (room, from, gw) in [
        ("ra", "alice", "g1"),
        ("rb", "bob", "g2"),
        ("ra", "alice", "g1"),
    ] {
        let ev = app.say(room, from, "hi").await;
        let got = app.deliveries_before_room_sentinel().await;
        assert_eq!(by_gateway(&got, &ev), vec![(gw.into(), vec![u(from)])]);
    }
    let asked = app.directory.lock().expect("lock").member_requests - before;
    assert!(
        asked >= 3,
        "one cached room: each switch re-reads members ({asked})"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_presence_snapshot_lists_online_co_members_and_refuses_garbage() {
    let app = spawn_app_with(&[("CHAT_FANOUT_PRESENCE_MAX_ROOM", "3")]).await;
    app.set_members("small", &["bob", "carol", "dave"]);
    app.set_members("big", &["bob", "erin", "frank", "gina"]);
    for (user, gw) in [("carol", "g1"), ("dave", "g2"), ("erin", "g1")] {
        app.online(user, gw).await;
    }
    let ask = |body: Vec<u8>| {
        let client = app.client.clone();
        async move {
            let msg = within(
                WAIT,
                "a snapshot reply",
                client.request(names::svc::FANOUT_PRESENCE_SNAPSHOT, body.into()),
            )
            .await
            .expect("reply");
            serde_json::from_slice::<Reply<chat_core::svc::PresenceSnapshot>>(&msg.payload)
                .expect("a Reply")
        }
    };
    // Both views must have seen the puts: wait until carol and dave show.
    let query = serde_json::json!({"v": SCHEMA_VERSION, "user": "bob", "rooms": ["small", "big"]});
    let snap = eventually(WAIT, "carol and dave online", || {
        let body = query.to_string().into_bytes();
        let ask = &ask;
        async move {
            match ask(body).await {
                Reply::Ok(s) if s.online.len() == 2 => Some(s),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(
        snap.online,
        vec![u("carol"), u("dave")],
        "erin is only in a room over the limit"
    );
    assert!(!snap.more);
    for (body, code) in [
        (b"not json".to_vec(), ErrorCode::Malformed),
        (br#"{"v":1,"user":"bob"}"#.to_vec(), ErrorCode::Malformed),
        (
            br#"{"v":2,"user":"bob","rooms":[]}"#.to_vec(),
            ErrorCode::BadRequest,
        ),
    ] {
        match ask(body.clone()).await {
            Reply::Error(e) => assert_eq!(e.code, code, "{}", String::from_utf8_lossy(&body)),
            Reply::Ok(s) => panic!("{} answered {s:?}", String::from_utf8_lossy(&body)),
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_events_reaches_a_gateway_coalesced_and_in_order() {
    let mut app = spawn_app().await;
    app.set_members("r1", &["alice", "bob"]);
    app.online("alice", "g1").await;
    app.online("bob", "g1").await;
    let first = app.say("r1", "alice", "warm-up").await;
    let got = app.deliveries_before_room_sentinel().await;
    assert_eq!(
        by_gateway(&got, &first),
        vec![("g1".into(), vec![u("alice"), u("bob")])]
    );

    // Hold the events back, then let them through at once: a run.
    let stream = app.js.get_stream(names::ROOM_STREAM).await.expect("stream");
    let durable = names::partition_durable(names::FANOUT_DURABLE, 0);
    let until = time::OffsetDateTime::now_utc() + Duration::from_secs(60);
    stream.pause_consumer(&durable, until).await.expect("pause");
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(app.say("r1", "alice", &format!("m{i}")).await.seq);
    }
    stream.resume_consumer(&durable).await.expect("resume");

    let (mut messages, mut seqs) = (0, Vec::new());
    while seqs.len() < sent.len() {
        let msg = within(WAIT, "deliveries", app.deliveries.next())
            .await
            .expect("subscription open");
        let r1: Vec<u64> = Delivery::decode_all(&msg.payload)
            .expect("deliveries")
            .into_iter()
            .filter(|d| d.room == Some(r("r1")))
            .filter_map(|d| d.seq)
            .collect();
        if !r1.is_empty() {
            assert_eq!(msg.subject.as_str(), "gw.g1.deliver");
            messages += 1;
            seqs.extend(r1);
        }
    }
    assert_eq!(seqs, sent, "every event once, in order");
    assert!(
        messages < sent.len(),
        "20 events took {messages} messages: not coalesced"
    );
    app.stop().await;
}
