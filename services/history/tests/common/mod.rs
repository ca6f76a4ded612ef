//! Test harness: a real nats-server, the history service on port 0 over a
//! temp-dir database, a RoomLog to append events, and request helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chat_core::names;
use chat_core::svc::Reply;
use chat_history::Config;
use chat_platform::Shutdown;
use chat_platform::config::MapSource;
use chat_store::{HistoryStore, PageRange, SqliteStore};
use chat_stream::RoomLog;
use chat_stream::setup::{self, StreamSettings};
use chat_testkit::{NatsServer, eventually, within};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(15);

/// NATS plus what tests use to talk to it.
pub struct Harness {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub log: RoomLog,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        chat_platform::telemetry::init_for_tests();
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = nats.admin_client().await.expect("test client connects");
        let js = jetstream::new(client.clone());
        let stream = setup::room_stream(&js, &StreamSettings::default())
            .await
            .expect("room stream");
        let log = RoomLog::new(js.clone(), stream);
        let dir = tempfile::tempdir().expect("temp dir");
        Self {
            nats,
            client,
            js,
            log,
            dir,
        }
    }

    /// The database file the service uses.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/history.db")
    }

    pub fn config(&self) -> Config {
        let src = MapSource::new()
            .with("CHAT_NATS_URL", self.nats.url())
            .with_all(chat_testkit::service_env(chat_testkit::Role::History))
            .with("CHAT_HISTORY_DB", self.db().display().to_string())
            .with("CHAT_HISTORY_BATCH", "16")
            .with("CHAT_HISTORY_RETRY_MAX_MS", "200")
            // A pull request left behind by a stopped instance may hold
            // messages until their ack wait ends: keep it short here.
            .with("CHAT_HISTORY_ACK_WAIT_MS", "3000");
        Config::from_source(&src).expect("test config is valid")
    }

    /// Starts the service on the SQLite file and waits until it is ready.
    pub async fn spawn(&self) -> App {
        self.spawn_with(self.config()).await
    }

    /// Like [`Harness::spawn`] with a changed config.
    pub async fn spawn_with(&self, config: Config) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(chat_history::run(config, listener, shutdown.clone()));
        let app = App {
            addr,
            shutdown,
            handle,
        };
        app.wait_ready().await;
        app
    }

    /// Starts the service on a given store and waits until it is ready.
    pub async fn spawn_with_store(&self, store: Arc<dyn HistoryStore>) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(chat_history::run_with_store(
            self.config(),
            store,
            listener,
            shutdown.clone(),
        ));
        let app = App {
            addr,
            shutdown,
            handle,
        };
        app.wait_ready().await;
        app
    }

    /// A second connection to the service's database file.
    pub fn open_db(&self) -> SqliteStore {
        SqliteStore::open(self.db()).expect("open the service's database")
    }

    /// Sends a request and decodes the reply.
    pub async fn request<Q: Serialize, T: DeserializeOwned>(
        &self,
        subject: &str,
        q: &Q,
    ) -> Reply<T> {
        let body = serde_json::to_vec(q).expect("encode request");
        self.request_raw(subject, body).await
    }

    pub async fn request_raw<T: DeserializeOwned>(&self, subject: &str, body: Vec<u8>) -> Reply<T> {
        let msg = within(
            WAIT,
            "history reply",
            self.client.request(subject.to_string(), body.into()),
        )
        .await
        .expect("request answered");
        serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
            panic!(
                "reply is not Reply<T> JSON ({e}): {}",
                String::from_utf8_lossy(&msg.payload)
            )
        })
    }

    /// Waits until the history consumer has nothing pending or unacked.
    pub async fn wait_consumer_idle(&self) {
        let stream = self
            .js
            .get_stream(names::ROOM_STREAM)
            .await
            .expect("room stream");
        eventually(WAIT, "history consumer to ack everything", || {
            let stream = stream.clone();
            async move {
                let backlog =
                    chat_testkit::partition_backlog(&stream, names::HISTORY_DURABLE).await?;
                (backlog == 0).then_some(())
            }
        })
        .await;
    }
}

/// Every stored event of a room (up to 1000), read straight from a store.
pub async fn stored(
    store: &dyn HistoryStore,
    room: &chat_core::RoomId,
) -> Vec<chat_core::events::RoomEvent> {
    store
        .page(
            room,
            PageRange {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .expect("page from store")
        .events
}

/// A running service.
pub struct App {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl App {
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.addr);
        eventually(WAIT, "history /readyz to answer 200", || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// Cancels the token and waits (bounded) for `run` to return cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within(
            Duration::from_secs(10),
            "history run to return after shutdown",
            self.handle,
        )
        .await
        .expect("run task did not panic")
        .expect("run returned Ok");
    }
}

pub fn user(s: &str) -> chat_core::UserId {
    chat_core::UserId::parse(s).expect("valid user id")
}

pub fn cmid(s: &str) -> chat_core::ClientMsgId {
    chat_core::ClientMsgId::parse(s).expect("valid cmid")
}
