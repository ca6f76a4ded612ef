//! Idempotent creation of the streams, consumers and buckets this system
//! owns. Each service creates what it consumes at start unless
//! `CHAT_MANAGE_NATS=false`, in which case it only looks them up.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use chat_core::names;

/// Failure to create or find a JetStream resource.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("JetStream stream {name}: {reason}")]
    Stream { name: String, reason: String },
    #[error("JetStream consumer {name}: {reason}")]
    Consumer { name: String, reason: String },
    #[error("KV bucket {name}: {reason}")]
    Bucket { name: String, reason: String },
}

/// How long setup keeps retrying while JetStream is not usable yet (a
/// cluster still electing leaders, a server still starting).
const SETUP_RETRY_FOR: Duration = Duration::from_secs(60);

/// Runs `op` until it succeeds or [`SETUP_RETRY_FOR`] has passed, backing
/// off between attempts; the last error is returned.
async fn retrying<T, E: std::fmt::Display, F, Fut>(what: &str, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let end = tokio::time::Instant::now() + SETUP_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < end => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what}: not ready yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How streams and buckets are created.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Create resources (true) or only look them up (false).
    pub manage: bool,
    /// Replicas (1 locally, 3 in production).
    pub replicas: usize,
    /// Publish de-duplication window of the room stream.
    pub dedup_window: Duration,
    /// Partitions of the room stream when it is created (ADR 0009).
    pub partitions: u16,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            manage: true,
            replicas: 1,
            dedup_window: Duration::from_secs(120),
            partitions: 4,
        }
    }
}

/// The room stream's configuration: every `chat.room.<room>.<kind>` event,
/// stored with a partition token appended (ADR 0009), file storage, direct
/// get (for the sequencer and resume), de-duplication window.
pub fn room_stream_config(s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: names::ROOM_STREAM.to_string(),
        description: Some("Room events, in room-sequence order per room".into()),
        subjects: vec![names::ROOM_SUBJECT_PUBLISHED.to_string()],
        subject_transform: Some(stream::SubjectTransform {
            source: names::ROOM_SUBJECT_PUBLISHED.to_string(),
            destination: names::room_partition_transform(s.partitions),
        }),
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: s.dedup_window,
        allow_direct: true,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_message_size: 1024 * 1024,
        ..Default::default()
    }
}

/// Creates (or finds) the room stream. A stream without the partition
/// transform (made before ADR 0009) is refused: its events are stored under
/// other subjects, which neither the sequencer nor the consumers would see.
pub async fn room_stream(
    js: &jetstream::Context,
    s: &StreamSettings,
) -> Result<stream::Stream, SetupError> {
    let err = |reason: String| SetupError::Stream {
        name: names::ROOM_STREAM.into(),
        reason,
    };
    let stream = if s.manage {
        retrying("room stream", || {
            js.get_or_create_stream(room_stream_config(s))
        })
        .await
        .map_err(|e| err(e.to_string()))?
    } else {
        js.get_stream(names::ROOM_STREAM)
            .await
            .map_err(|e| err(format!("not found and CHAT_MANAGE_NATS=false: {e}")))?
    };
    room_partitions(&stream).map_err(err)?;
    Ok(stream)
}

/// The room stream's partition count, from its subject transform.
pub fn room_partitions(stream: &stream::Stream) -> Result<u16, String> {
    stream
        .cached_info()
        .config
        .subject_transform
        .as_ref()
        .and_then(|t| names::parse_room_partition_transform(&t.destination))
        .ok_or_else(|| {
            "the stream has no partition transform: it was made by a version before \
             ADR 0009; see docs/operations.md (\"Upgrading a room stream\")"
                .to_string()
        })
}

/// Creates (or finds) a durable pull consumer with explicit ack on `stream`.
pub async fn durable_consumer(
    stream: &stream::Stream,
    name: &str,
    filter: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
    manage: bool,
) -> Result<consumer::PullConsumer, SetupError> {
    let config = consumer::pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: filter.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    consumer_with(stream, name, config, manage).await
}

/// Creates (or finds, when not managing NATS) the consumer `name`.
pub(crate) async fn consumer_with(
    stream: &stream::Stream,
    name: &str,
    config: consumer::pull::Config,
    manage: bool,
) -> Result<consumer::PullConsumer, SetupError> {
    let err = |reason: String| SetupError::Consumer {
        name: name.into(),
        reason,
    };
    if manage {
        retrying("durable consumer", || {
            stream.get_or_create_consumer(name, config.clone())
        })
        .await
        .map_err(|e| err(e.to_string()))
    } else {
        stream
            .get_consumer(name)
            .await
            .map_err(|e| err(format!("not found and CHAT_MANAGE_NATS=false: {e}")))
    }
}

/// Creates (or finds) the presence bucket: (user, gateway) entries, kept
/// until deleted (they go with their gateway's lease). A bucket made by an
/// earlier version, whose entries expired after the TTL, is updated to keep
/// them (when managing NATS).
pub async fn presence_bucket(
    js: &jetstream::Context,
    s: &StreamSettings,
) -> Result<kv::Store, SetupError> {
    let err = |reason: String| SetupError::Bucket {
        name: names::PRESENCE_BUCKET.into(),
        reason,
    };
    if let Ok(store) = js.get_key_value(names::PRESENCE_BUCKET).await {
        if s.manage {
            let mut info = js
                .get_stream(format!("KV_{}", names::PRESENCE_BUCKET))
                .await
                .map_err(|e| err(e.to_string()))?;
            let config = info
                .info()
                .await
                .map_err(|e| err(e.to_string()))?
                .config
                .clone();
            if config.max_age != Duration::ZERO {
                let kept = stream::Config {
                    max_age: Duration::ZERO,
                    subject_delete_marker_ttl: None,
                    ..config
                };
                js.update_stream(kept)
                    .await
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        return Ok(store);
    }
    find_or_create_bucket(
        js,
        s,
        kv::Config {
            bucket: names::PRESENCE_BUCKET.to_string(),
            description: "user.gateway -> {since, n}; removed with the gateway's lease".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
    )
    .await
}

/// Creates (or finds) the bucket of gateway leases: a lease lives `ttl`
/// unless a heartbeat renews it, and its expiry leaves a marker the
/// presence service's durable consumer sees.
pub async fn presence_leases_bucket(
    js: &jetstream::Context,
    s: &StreamSettings,
    ttl: Duration,
) -> Result<kv::Store, SetupError> {
    find_or_create_bucket(
        js,
        s,
        kv::Config {
            bucket: names::PRESENCE_LEASES_BUCKET.to_string(),
            description: "gateway -> lease; expires without heartbeats".into(),
            history: 1,
            max_age: ttl,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            limit_markers: Some(ttl.max(Duration::from_secs(1))),
            ..Default::default()
        },
    )
    .await
}

/// The bucket `config` names: found as it is, or created (when managing
/// NATS).
pub(crate) async fn find_or_create_bucket(
    js: &jetstream::Context,
    s: &StreamSettings,
    config: kv::Config,
) -> Result<kv::Store, SetupError> {
    let err = |reason: String| SetupError::Bucket {
        name: config.bucket.clone(),
        reason,
    };
    if let Ok(store) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(store);
    }
    if !s.manage {
        return Err(err("not found and CHAT_MANAGE_NATS=false".into()));
    }
    let what = format!("bucket {}", config.bucket);
    retrying(&what, || js.create_key_value(config.clone()))
        .await
        .map_err(|e| err(e.to_string()))
}

/// The bucket of revoked sessions (auth writes it): created if missing,
/// with entries kept `max_age` (at least the longest access-token life).
pub async fn revoked_bucket(
    js: &jetstream::Context,
    s: &StreamSettings,
    max_age: Duration,
) -> Result<kv::Store, SetupError> {
    find_or_create_bucket(
        js,
        s,
        kv::Config {
            bucket: names::REVOKED_BUCKET.to_string(),
            description: "revoked session id -> {user, at}; kept as long as an access token lives"
                .into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
    )
    .await
}
