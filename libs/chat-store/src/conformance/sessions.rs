//! The [`SessionStore`] conformance suite.

use std::sync::Arc;

use chat_core::UserId;

use super::ok;
use crate::{PendingLogin, RefreshRecord, Rotation, Session, SessionStore};

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

/// Runs every [`SessionStore`] case against stores made by `make`.
pub async fn session_store_suite(make: impl Fn() -> Arc<dyn SessionStore>) {
    a_refresh_token_rotates_once(make().as_ref()).await;
    reusing_a_used_token_revokes_the_session(make().as_ref()).await;
    expired_and_unknown_tokens_are_invalid(make().as_ref()).await;
    sessions_beyond_the_limit_evict_the_oldest(make().as_ref()).await;
    revoking_one_or_all_sessions(make().as_ref()).await;
    a_pending_login_is_taken_once_and_expires(make().as_ref()).await;
}

async fn a_pending_login_is_taken_once_and_expires(store: &dyn SessionStore) {
    let login = |created_at: u64| PendingLogin {
        state: format!("st{}", UserId::generate()),
        binding: "b".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        created_at,
    };
    let fresh = login(T0);
    assert!(ok(store.put_login(&fresh, T0 - 1000, 1000).await, "put"));
    let got = ok(store.take_login(&fresh.state, T0 - 1000).await, "take");
    assert_eq!(
        got,
        Some(fresh.clone()),
        "conformance/sessions: pending login"
    );
    let again = ok(
        store.take_login(&fresh.state, T0 - 1000).await,
        "take again",
    );
    assert_eq!(
        again, None,
        "conformance/sessions: a pending login was used twice"
    );
    let old = login(T0);
    assert!(ok(store.put_login(&old, T0 - 1000, 1000).await, "put"));
    let late = ok(store.take_login(&old.state, T0 + 1).await, "take late");
    assert_eq!(
        late, None,
        "conformance/sessions: an expired login was accepted"
    );
    // The bound: older entries are cleared first, then at most `max`.
    let (a, b) = (login(T0 + 10), login(T0 + 10));
    assert!(ok(store.put_login(&a, T0 + 5, 1).await, "put a"));
    assert!(
        !ok(store.put_login(&b, T0 + 5, 1).await, "put b"),
        "conformance/sessions: pending logins beyond the limit"
    );
    assert_eq!(ok(store.take_login(&b.state, T0).await, "take b"), None);
}

fn session(user: &UserId, created_at: u64) -> Session {
    Session {
        id: format!("s{}", UserId::generate()),
        user: user.clone(),
        created_at,
        expires_at: created_at + 30 * DAY,
        revoked_at: None,
    }
}

fn token(expires_at: u64) -> RefreshRecord {
    RefreshRecord {
        hash: format!("h{}", UserId::generate()),
        expires_at,
    }
}

async fn a_refresh_token_rotates_once(store: &dyn SessionStore) {
    let user = UserId::generate();
    let s = session(&user, T0);
    let (first, second, third) = (token(T0 + DAY), token(T0 + DAY), token(T0 + DAY));
    ok(store.create_session(&s, &first, 10).await, "create");
    let r = ok(
        store.rotate_refresh(&first.hash, &second, T0 + 1).await,
        "rotate",
    );
    assert_eq!(
        r,
        Rotation::Rotated(s.clone()),
        "conformance/sessions: first use rotates"
    );
    let r = ok(
        store.rotate_refresh(&second.hash, &third, T0 + 2).await,
        "rotate",
    );
    assert_eq!(
        r,
        Rotation::Rotated(s.clone()),
        "conformance/sessions: the next token rotates"
    );
    let of = ok(
        store.session_of_refresh(&first.hash).await,
        "session_of_refresh",
    );
    assert_eq!(
        of.map(|s| s.id),
        Some(s.id),
        "conformance/sessions: a used token still names its session"
    );
}

async fn reusing_a_used_token_revokes_the_session(store: &dyn SessionStore) {
    let user = UserId::generate();
    let s = session(&user, T0);
    let (first, second, third) = (token(T0 + DAY), token(T0 + DAY), token(T0 + DAY));
    ok(store.create_session(&s, &first, 10).await, "create");
    ok(
        store.rotate_refresh(&first.hash, &second, T0 + 1).await,
        "rotate",
    );
    let r = ok(
        store.rotate_refresh(&first.hash, &third, T0 + 2).await,
        "reuse",
    );
    let Rotation::Reused(revoked) = r else {
        panic!("conformance/sessions: reuse of a used token gave {r:?}");
    };
    assert_eq!(revoked.revoked_at, Some(T0 + 2));
    // The whole family is dead: the newest token no longer works either.
    let r = ok(
        store.rotate_refresh(&second.hash, &third, T0 + 3).await,
        "after reuse",
    );
    assert_eq!(
        r,
        Rotation::Invalid,
        "conformance/sessions: the family survived a reuse"
    );
    let got = ok(store.get_session(&s.id).await, "get");
    assert!(got.is_some_and(|g| !g.is_live(T0 + 3)));
}

async fn expired_and_unknown_tokens_are_invalid(store: &dyn SessionStore) {
    let user = UserId::generate();
    let s = session(&user, T0);
    let first = token(T0 + 10);
    ok(store.create_session(&s, &first, 10).await, "create");
    let r = ok(
        store
            .rotate_refresh(&first.hash, &token(T0 + DAY), T0 + 10)
            .await,
        "expired",
    );
    assert_eq!(
        r,
        Rotation::Invalid,
        "conformance/sessions: an expired token rotated"
    );
    let r = ok(
        store.rotate_refresh("nope", &token(T0 + DAY), T0).await,
        "unknown",
    );
    assert_eq!(r, Rotation::Invalid);
    // The session's end caps every token.
    let s2 = session(&user, T0);
    let long = token(s2.expires_at + DAY);
    ok(store.create_session(&s2, &long, 10).await, "create");
    let r = ok(
        store
            .rotate_refresh(&long.hash, &token(T0 + DAY), s2.expires_at)
            .await,
        "ended",
    );
    assert_eq!(
        r,
        Rotation::Invalid,
        "conformance/sessions: a token outlived its session"
    );
}

async fn sessions_beyond_the_limit_evict_the_oldest(store: &dyn SessionStore) {
    let user = UserId::generate();
    let sessions: Vec<Session> = (0..3).map(|i| session(&user, T0 + i)).collect();
    let mut evicted = Vec::new();
    for s in &sessions {
        evicted.extend(ok(
            store.create_session(s, &token(T0 + DAY), 2).await,
            "create",
        ));
    }
    assert_eq!(
        evicted,
        vec![sessions[0].id.clone()],
        "conformance/sessions: eviction"
    );
    let oldest = ok(store.get_session(&sessions[0].id).await, "get");
    assert!(oldest.is_some_and(|s| s.revoked_at.is_some()));
}

async fn revoking_one_or_all_sessions(store: &dyn SessionStore) {
    let user = UserId::generate();
    let (a, b, c) = (
        session(&user, T0),
        session(&user, T0 + 1),
        session(&user, T0 + 2),
    );
    let ta = token(T0 + DAY);
    for s in [&a, &b, &c] {
        let t = if s.id == a.id {
            ta.clone()
        } else {
            token(T0 + DAY)
        };
        ok(store.create_session(s, &t, 10).await, "create");
    }
    assert!(ok(store.revoke_session(&a.id, T0 + 5).await, "revoke"));
    assert!(!ok(
        store.revoke_session(&a.id, T0 + 6).await,
        "revoke again"
    ));
    let r = ok(
        store
            .rotate_refresh(&ta.hash, &token(T0 + DAY), T0 + 7)
            .await,
        "revoked",
    );
    assert_eq!(
        r,
        Rotation::Invalid,
        "conformance/sessions: a revoked session refreshed"
    );
    let all = ok(
        store.revoke_user_sessions(&user, T0 + 8).await,
        "revoke all",
    );
    assert_eq!(
        all,
        vec![b.id.clone(), c.id.clone()],
        "conformance/sessions: revoke all"
    );
    let other = ok(
        store
            .revoke_user_sessions(&UserId::generate(), T0 + 8)
            .await,
        "none",
    );
    assert!(other.is_empty());
}
