//! The [`ServiceAccountStore`] conformance suite.

use std::sync::Arc;

use chat_core::UserId;

use super::ok;
use crate::{ServiceAccount, ServiceAccountStore, StoreError};

/// Runs every [`ServiceAccountStore`] case against stores made by `make`.
pub async fn service_account_store_suite(make: impl Fn() -> Arc<dyn ServiceAccountStore>) {
    accounts_are_stored_listed_and_disabled(make().as_ref()).await;
}

async fn accounts_are_stored_listed_and_disabled(store: &dyn ServiceAccountStore) {
    let a = ServiceAccount {
        id: format!("sa_{}", UserId::generate()),
        user: UserId::generate(),
        name: "echo bot".into(),
        secret_hash: "ab12".into(),
        scopes: vec!["rooms:post".into(), "room:r1".into()],
        created_at: 1_700_000_000_000,
        disabled: false,
    };
    ok(store.create_service_account(&a).await, "create");
    assert_eq!(
        store.create_service_account(&a).await,
        Err(StoreError::AlreadyExists(format!(
            "service account {}",
            a.id
        ))),
        "conformance/service_accounts: an id is unique"
    );
    let got = ok(store.get_service_account(&a.id).await, "get");
    assert_eq!(
        got.as_ref(),
        Some(&a),
        "conformance/service_accounts: round trip"
    );
    let all = ok(store.list_service_accounts().await, "list");
    assert!(all.contains(&a), "conformance/service_accounts: listed");
    assert!(ok(store.disable_service_account(&a.id).await, "disable"));
    assert!(!ok(
        store.disable_service_account(&a.id).await,
        "disable again"
    ));
    let got = ok(store.get_service_account(&a.id).await, "get");
    assert!(
        got.is_some_and(|g| g.disabled),
        "conformance/service_accounts: disabled"
    );
    assert_eq!(ok(store.get_service_account("sa_none").await, "get"), None);
}
