//! `svc.presence.query` (queue group `presence`): which of some users are
//! online, answered from the local view.

use chat_core::svc::{ErrorCode, PresenceQuery, PresenceQueryReply, Reply, SvcError};
use chat_platform::Shutdown;
use tracing::instrument;

use crate::state::Presence;

/// Largest number of users one query may ask about.
pub const MAX_QUERY_USERS: usize = 1000;

/// Answers queries until shutdown, then drains the subscription.
pub async fn serve(
    presence: Presence,
    client: async_nats::Client,
    sub: async_nats::Subscriber,
    shutdown: Shutdown,
) {
    chat_platform::nats::serve_until_drained(sub, &shutdown, "presence queries", |msg| {
        let (presence, client) = (&presence, &client);
        async move {
            let Some(reply_to) = msg.reply.clone() else {
                return;
            };
            let reply = answer(presence, &msg.payload);
            match serde_json::to_vec(&reply) {
                Ok(body) => {
                    if let Err(e) = client.publish(reply_to, body.into()).await {
                        tracing::warn!(error = %e, "presence query reply not sent");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "presence query reply not encoded"),
            }
        }
    })
    .await;
}

/// `svc.presence.query`: the subset of the asked users that is online.
#[instrument(skip_all)]
pub fn answer(presence: &Presence, payload: &[u8]) -> Reply<PresenceQueryReply> {
    metrics::counter!("chat_presence_queries_total").increment(1);
    let query: PresenceQuery = match serde_json::from_slice(payload) {
        Ok(q) => q,
        Err(e) => {
            return Reply::Error(SvcError::new(ErrorCode::Malformed, e.to_string()));
        }
    };
    if query.users.len() > MAX_QUERY_USERS {
        return Reply::Error(SvcError::new(
            ErrorCode::BadRequest,
            format!("at most {MAX_QUERY_USERS} users per query"),
        ));
    }
    Reply::Ok(PresenceQueryReply {
        online: presence.view().online_of(&query.users),
    })
}
