//! The [`UserStore`] conformance suite.

use std::sync::Arc;

use chat_core::UserId;

use super::ok;
use crate::{Identity, UserStore};

fn identity(issuer: &str, subject: &str, name: &str, email: Option<&str>) -> Identity {
    Identity {
        issuer: issuer.to_string(),
        subject: subject.to_string(),
        name: name.to_string(),
        email: email.map(str::to_string),
    }
}

/// Runs every [`UserStore`] case against stores made by `make`.
pub async fn user_store_suite(make: impl Fn() -> Arc<dyn UserStore>) {
    first_sign_in_creates_a_user(make().as_ref()).await;
    later_sign_ins_find_the_same_user_and_update_the_profile(make().as_ref()).await;
    identities_differ_by_issuer_and_subject(make().as_ref()).await;
    unknown_users_are_absent(make().as_ref()).await;
}

/// A unique subject per case, so a shared store does not mix cases.
fn subject() -> String {
    UserId::generate().to_string()
}

async fn first_sign_in_creates_a_user(store: &dyn UserStore) {
    let sub = subject();
    let before = chat_core::time::now_ms();
    let id = identity("https://issuer.test", &sub, "Ada", Some("ada@example.com"));
    let user = ok(store.upsert_user(&id).await, "upsert_user (new)");
    assert_eq!(user.issuer, "https://issuer.test", "users: issuer kept");
    assert_eq!(user.subject, sub, "users: subject kept");
    assert_eq!(user.name, "Ada", "users: name kept");
    assert_eq!(
        user.email.as_deref(),
        Some("ada@example.com"),
        "users: email kept"
    );
    assert!(
        user.created_at >= before.saturating_sub(1000),
        "users: created_at {} should be about now ({before})",
        user.created_at
    );
    let got = ok(store.get_user(&user.id).await, "get_user");
    assert_eq!(
        got.as_ref(),
        Some(&user),
        "users: get_user returns the created user"
    );
}

async fn later_sign_ins_find_the_same_user_and_update_the_profile(store: &dyn UserStore) {
    let sub = subject();
    let first = ok(
        store
            .upsert_user(&identity("iss", &sub, "Old Name", Some("old@example.com")))
            .await,
        "upsert_user (first)",
    );
    let second = ok(
        store
            .upsert_user(&identity("iss", &sub, "New Name", None))
            .await,
        "upsert_user (second)",
    );
    assert_eq!(
        second.id, first.id,
        "users: same (issuer, subject) keeps its id"
    );
    assert_eq!(
        second.created_at, first.created_at,
        "users: created_at is the first sign-in"
    );
    assert_eq!(second.name, "New Name", "users: name updated on upsert");
    assert_eq!(
        second.email, None,
        "users: email updated (cleared) on upsert"
    );
    let got = ok(store.get_user(&first.id).await, "get_user");
    assert_eq!(
        got,
        Some(second),
        "users: get_user sees the updated profile"
    );
}

async fn identities_differ_by_issuer_and_subject(store: &dyn UserStore) {
    let sub = subject();
    let a = ok(
        store.upsert_user(&identity("iss-a", &sub, "A", None)).await,
        "upsert_user (issuer a)",
    );
    let b = ok(
        store.upsert_user(&identity("iss-b", &sub, "B", None)).await,
        "upsert_user (issuer b)",
    );
    let c = ok(
        store
            .upsert_user(&identity("iss-a", &subject(), "C", None))
            .await,
        "upsert_user (other subject)",
    );
    assert_ne!(
        a.id, b.id,
        "users: same subject at another issuer is another user"
    );
    assert_ne!(a.id, c.id, "users: another subject is another user");
    let got_a = ok(store.get_user(&a.id).await, "get_user a");
    assert_eq!(
        got_a.map(|u| u.name),
        Some("A".to_string()),
        "users: a unchanged by b"
    );
}

async fn unknown_users_are_absent(store: &dyn UserStore) {
    let got = ok(
        store.get_user(&UserId::generate()).await,
        "get_user (unknown)",
    );
    assert_eq!(got, None, "users: unknown id gives None");
}
