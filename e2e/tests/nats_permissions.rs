//! NATS permissions (ADR 0006): the test kit's server runs the production
//! authorization block, and each service identity is refused, by the
//! server, every publish and subscribe outside its role.

use std::time::Duration;

use chat_testkit::{NatsServer, Role};
use futures::StreamExt as _;
use tokio::sync::mpsc;

/// A client as `role` whose server errors (permission violations) arrive
/// on the returned channel.
async fn client(
    nats: &NatsServer,
    role: Role,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let c = async_nats::ConnectOptions::with_user_and_password(
        role.user().into(),
        chat_testkit::nats_auth::password(role).into(),
    )
    .custom_inbox_prefix(role.inbox_prefix())
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _sent = tx.send(e.to_string());
            }
        }
    })
    .connect(nats.url())
    .await
    .unwrap_or_else(|e| panic!("{role:?} connects: {e}"));
    (c, rx)
}

/// Waits for the server's violation error naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, errors.recv()).await {
            Ok(Some(e)) if e.contains(subject) && e.to_lowercase().contains(what) => return,
            Ok(Some(_other)) => {}
            _ => panic!("no {what} violation for {subject:?} within 5s"),
        }
    }
}

/// What each role must not do: (publish subjects, subscribe subjects).
fn forbidden(role: Role) -> (Vec<&'static str>, Vec<&'static str>) {
    match role {
        Role::Gateway => (
            vec![
                "gw.g1.deliver",
                "rooms.deliver",
                "chat.room.r1.member",
                "presence.user.u1",
                "$KV.chat_presence.u1.g1",
                "fanout.membership",
                "$KV.chat_revoked.s1",
                "$JS.API.STREAM.DELETE.CHAT_ROOMS",
                "$JS.API.STREAM.PURGE.CHAT_ROOMS",
                "$JS.API.CONSUMER.CREATE.CHAT_ROOMS.x",
                "$JS.API.CONSUMER.UNPIN.CHAT_ROOMS.fanout-p0",
                "$KV.chat_workers.fanout.f1",
            ],
            vec![
                "chat.room.>",
                "presence.in.*",
                "svc.history.>",
                "_INBOX.fanout.>",
                ">",
            ],
        ),
        Role::Fanout => (
            vec![
                "chat.room.r1.msg",
                "presence.in.g1",
                "svc.history.room.join",
                "$JS.API.STREAM.DELETE.CHAT_ROOMS",
                "$KV.chat_presence.u1.g1",
                // Another service's partitions and worker entries.
                "$JS.API.CONSUMER.MSG.NEXT.CHAT_ROOMS.history-p0",
                "$JS.API.CONSUMER.UNPIN.CHAT_ROOMS.history-p3",
                "$JS.API.CONSUMER.RESET.CHAT_ROOMS.history-p2",
                "$JS.API.CONSUMER.DELETE.CHAT_ROOMS.history",
                "$JS.API.CONSUMER.MSG.NEXT.CHAT_ROOMS.fanout-p32",
                "$KV.chat_workers.history.h1",
            ],
            vec![
                "gw.*.deliver",
                "rooms.deliver",
                "svc.history.>",
                "_INBOX.gateway.>",
                "chat.room.>",
            ],
        ),
        Role::History => (
            vec![
                "chat.room.r1.msg",
                "gw.g1.deliver",
                "rooms.deliver",
                "presence.user.u1",
                "$JS.API.STREAM.PURGE.CHAT_ROOMS",
                "$JS.API.CONSUMER.MSG.NEXT.CHAT_ROOMS.fanout-p0",
                "$JS.API.CONSUMER.DELETE.CHAT_ROOMS.fanout-p1",
                "$KV.chat_workers.fanout.f1",
            ],
            vec![
                "gw.*.deliver",
                "rooms.deliver",
                "presence.in.*",
                "_INBOX.>",
                "chat.room.>",
            ],
        ),
        Role::Presence => (
            vec![
                "chat.room.r1.msg",
                "gw.g1.deliver",
                "svc.history.room.join",
                "$JS.API.STREAM.DELETE.KV_chat_presence",
            ],
            vec![
                "svc.history.>",
                "gw.*.deliver",
                "rooms.deliver",
                "chat.room.>",
            ],
        ),
        Role::Auth => (
            vec![
                "chat.room.r1.msg",
                "gw.g1.deliver",
                "presence.in.g1",
                "$KV.chat_presence.u1.g1",
            ],
            vec![
                "chat.room.>",
                "gw.*.deliver",
                "rooms.deliver",
                "presence.in.*",
            ],
        ),
        Role::Admin => (vec![], vec![]),
    }
}

#[tokio::test]
async fn every_service_identity_is_refused_what_its_role_does_not_allow() {
    let nats = NatsServer::start().await.expect("nats");
    for role in Role::ALL {
        let (publish, subscribe) = forbidden(role);
        let (c, mut errors) = client(&nats, role).await;
        for subject in publish {
            c.publish(subject, "x".into()).await.expect("queued");
            c.flush().await.expect("flush");
            refused(&mut errors, "publish", subject).await;
        }
        for subject in subscribe {
            let _sub = c.subscribe(subject).await.expect("queued");
            refused(&mut errors, "subscription", subject).await;
        }
    }
}

#[tokio::test]
async fn allowed_traffic_flows_between_the_roles_that_need_it() {
    let nats = NatsServer::start().await.expect("nats");
    // fanout → gateway deliveries, gateway → presence reports.
    let (gateway, _) = client(&nats, Role::Gateway).await;
    let (fanout, _) = client(&nats, Role::Fanout).await;
    let (presence, _) = client(&nats, Role::Presence).await;
    let mut deliveries = gateway.subscribe("gw.g1.deliver").await.expect("sub");
    let mut reports = presence.subscribe("presence.in.*").await.expect("sub");
    for c in [&gateway, &presence] {
        chat_platform::nats::round_trip(c)
            .await
            .expect("round trip");
    }
    fanout
        .publish("gw.g1.deliver", "d".into())
        .await
        .expect("pub");
    gateway
        .publish("presence.in.g1", "r".into())
        .await
        .expect("pub");
    let within = Duration::from_secs(5);
    let d = tokio::time::timeout(within, deliveries.next()).await;
    assert_eq!(d.ok().flatten().map(|m| m.payload), Some("d".into()));
    let r = tokio::time::timeout(within, reports.next()).await;
    assert_eq!(r.ok().flatten().map(|m| m.payload), Some("r".into()));
    // Requests and their replies: gateway asks presence.
    let mut queries = presence.subscribe("svc.presence.query").await.expect("sub");
    chat_platform::nats::round_trip(&presence)
        .await
        .expect("round trip");
    let answer = tokio::spawn(async move {
        if let Some(q) = queries.next().await
            && let Some(reply) = q.reply
        {
            presence.publish(reply, "ok".into()).await.expect("reply");
            presence.flush().await.expect("flush");
        }
    });
    let reply = tokio::time::timeout(within, gateway.request("svc.presence.query", "q".into()))
        .await
        .expect("in time")
        .expect("answered");
    assert_eq!(reply.payload, "ok");
    answer.await.expect("responder");
}

#[tokio::test]
async fn connections_without_valid_credentials_are_refused() {
    let nats = NatsServer::start().await.expect("nats");
    let anonymous = async_nats::ConnectOptions::new().connect(nats.url()).await;
    assert!(anonymous.is_err(), "anonymous connection accepted");
    let wrong = async_nats::ConnectOptions::with_user_and_password(
        "gateway".into(),
        "not-the-password".into(),
    )
    .connect(nats.url())
    .await;
    assert!(wrong.is_err(), "wrong password accepted");
}
