//! `chat-auth service-account create|list|disable`: managing service
//! accounts in the auth database (`CHAT_AUTH_DB`), for operators.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use chat_store::{ServiceAccountStore, SqliteStore};

use crate::Config;

const USAGE: &str = "usage:
  chat-auth service-account create --name NAME --scope SCOPE [--scope SCOPE ...]
  chat-auth service-account list
  chat-auth service-account disable CLIENT_ID
scopes: rooms:post rooms:read rooms:join rooms:create room:<room id>";

/// Runs one command (`args` after `service-account`); prints JSON.
pub async fn run(args: &[String], config: &Config) -> anyhow::Result<()> {
    let db = config.db.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(db))
            .await
            .context("opening the auth database")?
            .context("opening the auth database (CHAT_AUTH_DB)")?,
    );
    match args {
        [cmd, rest @ ..] if cmd == "create" => {
            let (mut name, mut scopes) = (None, Vec::new());
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it
                    .next()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
                match flag.as_str() {
                    "--name" => name = Some(value.clone()),
                    "--scope" => scopes.push(value.clone()),
                    other => bail!("unknown option {other}\n{USAGE}"),
                }
            }
            let name = name.with_context(|| format!("--name is required\n{USAGE}"))?;
            let (account, secret) =
                crate::service_accounts::create(store.as_ref(), store.as_ref(), &name, scopes)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}",
                serde_json::json!({
                    "client_id": account.id,
                    "client_secret": secret,
                    "user": account.user,
                    "scopes": account.scopes,
                })
            );
        }
        [cmd] if cmd == "list" => {
            for a in store.list_service_accounts().await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "client_id": a.id, "name": a.name, "user": a.user,
                        "scopes": a.scopes, "disabled": a.disabled,
                    })
                );
            }
        }
        [cmd, id] if cmd == "disable" => {
            let changed = store.disable_service_account(id).await?;
            println!(
                "{}",
                serde_json::json!({ "client_id": id, "disabled": true, "changed": changed })
            );
        }
        _ => bail!("{USAGE}"),
    }
    Ok(())
}
