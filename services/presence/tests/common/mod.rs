//! The presence service under test: a real nats-server, the service in
//! this process, and helpers to report, watch changes and query.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chat_core::events::{PresenceChange, PresenceOp, PresenceReport};
use chat_core::names;
use chat_core::svc::{PresenceQuery, PresenceQueryReply, Reply};
use chat_core::{GatewayId, SCHEMA_VERSION, UserId};
use chat_platform::Shutdown;
use chat_platform::config::MapSource;
use chat_testkit::{NatsServer, eventually, within};
use futures::StreamExt;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct App {
    pub _nats: NatsServer,
    pub client: async_nats::Client,
    pub changes: async_nats::Subscriber,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub addr: SocketAddr,
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).expect("valid user id")
}

pub fn gw(s: &str) -> GatewayId {
    GatewayId::parse(s).expect("valid gateway id")
}

pub async fn spawn_app(ttl_ms: u64) -> App {
    chat_platform::telemetry::init_for_tests();
    let nats = NatsServer::start().await.expect("nats-server starts");
    spawn_app_on(nats, ttl_ms).await
}

pub async fn spawn_app_on(nats: NatsServer, ttl_ms: u64) -> App {
    let src = MapSource::new()
        .with("CHAT_NATS_URL", nats.url())
        .with_all(chat_testkit::service_env(chat_testkit::Role::Presence))
        .with("CHAT_PRESENCE_TTL_MS", ttl_ms.to_string());
    let config = chat_presence::Config::from_source(&src).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(chat_presence::run(config, listener, shutdown.clone()));
    let client = nats.admin_client().await.expect("connect");
    let changes = client
        .subscribe(names::PRESENCE_USER_ALL)
        .await
        .expect("subscribe changes");
    // Queries are subscribed after reports: once one is answered, reports
    // published from now on are received.
    eventually(WAIT, "presence to answer queries", || {
        let client = client.clone();
        async move { query(&client, &[]).await.ok() }
    })
    .await;
    App {
        _nats: nats,
        client,
        changes,
        shutdown,
        task,
        addr,
    }
}

pub async fn query(client: &async_nats::Client, users: &[UserId]) -> anyhow::Result<Vec<UserId>> {
    let body = serde_json::to_vec(&PresenceQuery {
        v: SCHEMA_VERSION,
        users: users.to_vec(),
    })?;
    let msg = tokio::time::timeout(
        Duration::from_millis(500),
        client.request(names::svc::PRESENCE_QUERY, body.into()),
    )
    .await??;
    let reply: Reply<PresenceQueryReply> = serde_json::from_slice(&msg.payload)?;
    Ok(reply.into_result()?.online)
}

impl App {
    /// A report numbered 0 (connects and disconnects; heartbeats without a
    /// number never remove anything).
    pub async fn report(&self, g: &str, op: PresenceOp, users: &[&str]) {
        self.numbered(g, op, users, 0, None).await;
    }

    pub async fn numbered(
        &self,
        g: &str,
        op: PresenceOp,
        users: &[&str],
        n: u64,
        part: Option<[u32; 2]>,
    ) {
        let report = PresenceReport {
            v: SCHEMA_VERSION,
            gw: gw(g),
            op,
            users: users.iter().map(|u| user(u)).collect(),
            n,
            part,
        };
        let body = serde_json::to_vec(&report).expect("encode report");
        self.client
            .publish(names::presence_in(&gw(g)), body.into())
            .await
            .expect("publish report");
    }

    pub async fn next_change(&mut self) -> PresenceChange {
        let msg = within(WAIT, "a presence change", self.changes.next())
            .await
            .expect("subscription open");
        let change: PresenceChange =
            serde_json::from_slice(&msg.payload).expect("valid presence change");
        assert_eq!(msg.subject.as_str(), names::presence_user(&change.user));
        change
    }

    pub async fn store(&self) -> async_nats::jetstream::kv::Store {
        async_nats::jetstream::new(self.client.clone())
            .get_key_value(names::PRESENCE_BUCKET)
            .await
            .expect("bucket exists")
    }

    pub async fn leases(&self) -> async_nats::jetstream::kv::Store {
        async_nats::jetstream::new(self.client.clone())
            .get_key_value(names::PRESENCE_LEASES_BUCKET)
            .await
            .expect("leases bucket exists")
    }

    /// Writes so far to the entries bucket (its stream's last sequence).
    pub async fn entry_writes(&self) -> u64 {
        let mut stream = async_nats::jetstream::new(self.client.clone())
            .get_stream(format!("KV_{}", names::PRESENCE_BUCKET))
            .await
            .expect("entries stream");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        within(WAIT, "presence to stop", self.task)
            .await
            .expect("task joins")
            .expect("run returns Ok");
    }
}
