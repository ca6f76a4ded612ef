//! The production NATS permission setup for tests: every server the kit
//! starts enforces `chat_platform::nats_security`, with one random password
//! per role for the whole test process (hashing is slow; sharing is safe).

use std::collections::HashMap;
use std::sync::OnceLock;

use chat_platform::nats_security::{self, Role, UserEntry};

struct Logins {
    passwords: HashMap<Role, String>,
    /// The auth callout's account seed (the auth service signs with it).
    callout_seed: String,
    config: String,
}

fn logins() -> &'static Logins {
    static LOGINS: OnceLock<Logins> = OnceLock::new();
    LOGINS.get_or_init(|| {
        let mut passwords = HashMap::new();
        let mut users = Vec::new();
        for role in Role::ALL {
            let pw = nats_security::random_password()
                .unwrap_or_else(|e| panic!("test NATS password: {e}"));
            let bcrypt_hash = nats_security::hash_password(&pw)
                .unwrap_or_else(|e| panic!("test NATS password: {e}"));
            users.push(UserEntry { role, bcrypt_hash });
            passwords.insert(role, pw);
        }
        let (callout_seed, issuer) =
            nats_security::new_callout_key().unwrap_or_else(|e| panic!("test callout key: {e}"));
        Logins {
            passwords,
            config: nats_security::render_authorization(&users, Some(&issuer)),
            callout_seed,
        }
    })
}

/// The `authorization` block every test server runs with.
pub fn authorization_config() -> &'static str {
    &logins().config
}

/// The password of `role` on every test server.
pub fn password(role: Role) -> &'static str {
    logins()
        .passwords
        .get(&role)
        .map(String::as_str)
        .unwrap_or_default()
}

/// The options that make a service connect as `role`
/// (`CHAT_<SVC>_NATS_USER` / `_PASSWORD`).
pub fn service_env(role: Role) -> Vec<(String, String)> {
    let svc = role.user().to_ascii_uppercase();
    let mut env = vec![
        (format!("CHAT_{svc}_NATS_USER"), role.user().to_string()),
        (
            format!("CHAT_{svc}_NATS_PASSWORD"),
            password(role).to_string(),
        ),
    ];
    // Auth also answers the server's callout for service accounts.
    if role == Role::Auth {
        env.push((
            "CHAT_AUTH_NATS_CALLOUT_SEED".into(),
            logins().callout_seed.clone(),
        ));
    }
    env
}

/// [`service_env`] of every service role (for the all-in-one).
pub fn all_services_env() -> Vec<(String, String)> {
    Role::ALL
        .into_iter()
        .filter(|r| *r != Role::Admin)
        .flat_map(service_env)
        .collect()
}

/// Connects to `url` (one server, or several comma-separated) as `role`, with that role's own inbox prefix (as the
/// services do).
pub async fn connect_as(url: &str, role: Role) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
    Ok(async_nats::ConnectOptions::with_user_and_password(
        role.user().into(),
        password(role).into(),
    )
    .custom_inbox_prefix(role.inbox_prefix())
    .connect(servers.as_slice())
    .await?)
}
