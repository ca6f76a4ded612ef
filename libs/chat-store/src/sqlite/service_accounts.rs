//! SQLite implementation of [`ServiceAccountStore`].

use async_trait::async_trait;
use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, db, parse_id, to_i64, to_u64};
use crate::StoreError;
use crate::service_accounts::{ServiceAccount, ServiceAccountStore};

const COLUMNS: &str = "id, user, name, secret_hash, scopes, created_at, disabled";

type Row = (String, String, String, String, String, i64, bool);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn to_account(
    (id, user, name, secret_hash, scopes, created_at, disabled): Row,
) -> Result<ServiceAccount, StoreError> {
    Ok(ServiceAccount {
        id,
        user: parse_id(user, "service account user")?,
        name,
        secret_hash,
        scopes: serde_json::from_str(&scopes)
            .map_err(|e| StoreError::Corrupt(format!("service account scopes: {e}")))?,
        created_at: to_u64(created_at, "created_at")?,
        disabled,
    })
}

#[async_trait]
impl ServiceAccountStore for SqliteStore {
    async fn create_service_account(&self, a: &ServiceAccount) -> Result<(), StoreError> {
        let a = a.clone();
        self.call(move |conn| {
            let scopes = serde_json::to_string(&a.scopes)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO service_accounts (id, user, name, secret_hash, scopes, created_at, disabled) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        a.id,
                        a.user.to_string(),
                        a.name,
                        a.secret_hash,
                        scopes,
                        to_i64(a.created_at, "created_at")?,
                        a.disabled
                    ],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(StoreError::AlreadyExists(format!("service account {}", a.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_service_account(&self, id: &str) -> Result<Option<ServiceAccount>, StoreError> {
        let id = id.to_string();
        self.call(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM service_accounts WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
            .map_err(db)?
            .map(to_account)
            .transpose()
        })
        .await
    }

    async fn list_service_accounts(&self) -> Result<Vec<ServiceAccount>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM service_accounts ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(to_account)).collect()
        })
        .await
    }

    async fn disable_service_account(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.call(move |conn| {
            let n = conn
                .execute(
                    "UPDATE service_accounts SET disabled = 1 WHERE id = ?1 AND disabled = 0",
                    params![id],
                )
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }
}
