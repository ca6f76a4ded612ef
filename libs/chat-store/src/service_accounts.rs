//! Service accounts: credentials other services (bots, moderation, push)
//! exchange for scoped access tokens (OAuth2 client credentials). Only a
//! hash of each secret is stored.

use async_trait::async_trait;
use chat_core::UserId;

use crate::StoreError;

/// A service account as stored. `id` is its OAuth2 `client_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub id: String,
    /// The user it acts as in rooms.
    pub user: UserId,
    pub name: String,
    /// SHA-256 (hex) of the client secret.
    pub secret_hash: String,
    /// What its tokens may do (`rooms:post`, `room:<id>`, …).
    pub scopes: Vec<String>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub disabled: bool,
}

/// Service accounts by client id.
#[async_trait]
pub trait ServiceAccountStore: Send + Sync {
    /// Stores a new account; `AlreadyExists` if the id is taken.
    async fn create_service_account(&self, account: &ServiceAccount) -> Result<(), StoreError>;
    /// The account with this client id.
    async fn get_service_account(&self, id: &str) -> Result<Option<ServiceAccount>, StoreError>;
    /// Every account, oldest first.
    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, StoreError>;
    /// Disables an account (its secret stops working); true if it was enabled.
    async fn disable_service_account(&self, id: &str) -> Result<bool, StoreError>;
}
