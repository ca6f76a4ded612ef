//! What a partitioned service (fanout, history) still has to handle: the
//! sum over its `<service>-p<n>` consumers of pending and unacked events.

use async_nats::jetstream::stream::Stream;
use futures::StreamExt;

/// Pending plus unacked events over every partition consumer of `service`
/// on `stream`; None when a consumer could not be read (or none exists).
pub async fn partition_backlog(stream: &Stream, service: &str) -> Option<u64> {
    let prefix = format!("{service}-p");
    let mut infos = stream.consumers();
    let mut total = 0u64;
    let mut seen = 0usize;
    while let Some(info) = infos.next().await {
        let info = info.ok()?;
        if info.name.starts_with(&prefix) {
            seen += 1;
            total += info.num_pending + info.num_ack_pending as u64;
        }
    }
    (seen > 0).then_some(total)
}
