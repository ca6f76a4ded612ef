//! Who may do what on NATS: one identity (user) per service role with the
//! subjects it may publish and subscribe to, and the nats-server
//! `authorization` block that enforces it (ADR 0006). The test kit, the
//! local start script (`chat nats-setup`) and the deployment all render the
//! server configuration from this one table.

use std::fmt::Write as _;

use chat_core::names;

/// A NATS identity. Each service connects as its own role; `Admin` is for
/// operators and test harnesses only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Auth,
    Gateway,
    Fanout,
    History,
    Presence,
    Admin,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 6] = [
        Role::Auth,
        Role::Gateway,
        Role::Fanout,
        Role::History,
        Role::Presence,
        Role::Admin,
    ];

    /// The NATS user name (and the service's name).
    pub fn user(self) -> &'static str {
        match self {
            Role::Auth => "auth",
            Role::Gateway => "gateway",
            Role::Fanout => "fanout",
            Role::History => "history",
            Role::Presence => "presence",
            Role::Admin => "admin",
        }
    }

    /// The prefix of this role's reply inboxes. Each role has its own, so
    /// no identity may read the replies meant for another.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX.{}", self.user())
    }

    /// What this role may publish and subscribe to.
    pub fn permissions(self) -> Permissions {
        let room = names::ROOM_STREAM;
        let kv = format!("KV_{}", names::PRESENCE_BUCKET);
        let inbox = format!("{}.>", self.inbox_prefix());
        // `round_trip` (readiness) requests on a subject nobody serves.
        let sync = "_CHAT.SYNC.>".to_string();
        let stream_setup = |s: &str| {
            vec![
                "$JS.API.INFO".to_string(),
                format!("$JS.API.STREAM.INFO.{s}"),
                format!("$JS.API.STREAM.CREATE.{s}"),
                format!("$JS.API.STREAM.UPDATE.{s}"),
            ]
        };
        let durable = |s: &str, d: &str| {
            vec![
                format!("$JS.API.CONSUMER.CREATE.{s}.{d}"),
                format!("$JS.API.CONSUMER.CREATE.{s}.{d}.>"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.{d}"),
                format!("$JS.API.CONSUMER.INFO.{s}.{d}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{d}"),
                format!("$JS.ACK.{s}.{d}.>"),
            ]
        };
        let room_reads = vec![
            format!("$JS.API.DIRECT.GET.{room}"),
            format!("$JS.API.DIRECT.GET.{room}.>"),
            format!("$JS.API.STREAM.MSG.GET.{room}"),
        ];
        let revoked = format!("KV_{}", names::REVOKED_BUCKET);
        // A KV watch is an ordered push consumer delivered to an inbox.
        let watch = |kv: &str| {
            vec![
                "$JS.API.INFO".to_string(),
                format!("$JS.API.STREAM.INFO.{kv}"),
                format!("$JS.API.CONSUMER.CREATE.{kv}"),
                format!("$JS.API.CONSUMER.CREATE.{kv}.>"),
                format!("$JS.API.CONSUMER.DELETE.{kv}.>"),
                format!("$JS.API.DIRECT.GET.{kv}.>"),
                "$JS.FC.>".to_string(),
            ]
        };
        let kv_watch = watch(&kv);
        // One pinned durable per partition (ADR 0009), its unpin, pause and
        // reset (a takeover redelivers the earlier owner's events), the
        // removal of the unpartitioned durable of earlier versions, and the
        // instances' bucket.
        let partitioned = |base: &str| {
            let mut p = vec![format!("$JS.API.CONSUMER.DELETE.{room}.{base}")];
            for n in 0..names::MAX_ROOM_PARTITIONS {
                let d = names::partition_durable(base, n);
                p.extend(durable(room, &d));
                p.push(format!("$JS.API.CONSUMER.UNPIN.{room}.{d}"));
                p.push(format!("$JS.API.CONSUMER.PAUSE.{room}.{d}"));
                p.push(format!("$JS.API.CONSUMER.RESET.{room}.{d}"));
            }
            let workers = format!("KV_{}", names::WORKERS_BUCKET);
            p.push(format!("$KV.{}.{base}.*", names::WORKERS_BUCKET));
            p.extend(stream_setup(&workers));
            p.extend(watch(&workers));
            p
        };
        let (publish, subscribe): (Vec<String>, Vec<String>) = match self {
            Role::Admin => (vec![">".into()], vec![">".into()]),
            Role::Auth => {
                let mut p = vec![sync, format!("$KV.{}.>", names::REVOKED_BUCKET)];
                p.extend(stream_setup(&revoked));
                // The auth callout: the server asks auth about every
                // connection that is not one of these service users.
                (p, vec![inbox, CALLOUT_SUBJECT.into()])
            }
            Role::Gateway => {
                let mut p = vec![
                    sync,
                    format!("{}.*.msg", names::ROOM_SUBJECT_PREFIX),
                    names::PRESENCE_IN_ALL.into(),
                    names::svc::HISTORY_ALL.into(),
                    names::svc::PRESENCE_QUERY.into(),
                    names::svc::FANOUT_PRESENCE_SNAPSHOT.into(),
                ];
                p.extend(stream_setup(room));
                p.extend(room_reads);
                p.extend(watch(&revoked));
                (
                    p,
                    vec![
                        inbox,
                        "gw.*.deliver".into(),
                        "gw.*.heads".into(),
                        names::ROOM_DELIVER.into(),
                    ],
                )
            }
            Role::Fanout => {
                let mut p = vec![
                    sync,
                    "gw.*.deliver".into(),
                    "gw.*.heads".into(),
                    names::ROOM_DELIVER.into(),
                    names::FANOUT_MEMBERSHIP.into(),
                    // Read-only history queries: who is in a room, whose rooms.
                    names::svc::HISTORY_ROOM_MEMBERS.into(),
                    names::svc::HISTORY_USER_ROOMS.into(),
                ];
                p.extend(stream_setup(room));
                p.extend(partitioned(names::FANOUT_DURABLE));
                p.extend(kv_watch);
                (
                    p,
                    vec![
                        inbox,
                        names::FANOUT_MEMBERSHIP.into(),
                        names::PRESENCE_USER_ALL.into(),
                        "svc.fanout.>".into(),
                    ],
                )
            }
            Role::History => {
                let mut p = vec![sync, format!("{}.*.member", names::ROOM_SUBJECT_PREFIX)];
                p.extend(stream_setup(room));
                p.extend(partitioned(names::HISTORY_DURABLE));
                p.extend(room_reads);
                (p, vec![inbox, names::svc::HISTORY_ALL.into()])
            }
            Role::Presence => {
                let mut p = vec![
                    sync,
                    names::PRESENCE_USER_ALL.into(),
                    format!("$KV.{}.>", names::PRESENCE_BUCKET),
                ];
                p.extend(stream_setup(&kv));
                p.extend(kv_watch);
                // Gateway leases: renewed, read, and expired through a
                // durable consumer.
                let leases = format!("KV_{}", names::PRESENCE_LEASES_BUCKET);
                p.push(format!("$KV.{}.>", names::PRESENCE_LEASES_BUCKET));
                p.push(format!("$JS.API.DIRECT.GET.{leases}.>"));
                p.push(format!("$JS.API.STREAM.MSG.GET.{leases}"));
                p.extend(stream_setup(&leases));
                p.extend(durable(&leases, names::PRESENCE_LEASES_DURABLE));
                (
                    p,
                    vec![
                        inbox,
                        names::PRESENCE_IN_ALL.into(),
                        "svc.presence.>".into(),
                    ],
                )
            }
        };
        Permissions { publish, subscribe }
    }
}

/// Subjects (with wildcards) a role may publish and subscribe to. Every role
/// may also answer requests it received (`allow_responses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Where nats-server sends authorization requests (auth callout).
pub const CALLOUT_SUBJECT: &str = "$SYS.REQ.USER.AUTH";

/// One user of the rendered configuration: a role and its bcrypt password
/// hash (never the password itself).
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub role: Role,
    pub bcrypt_hash: String,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash a NATS password: {0}")]
pub struct HashError(String);

/// Bcrypt cost of rendered password hashes: nats-server checks one hash per
/// connection, so this is paid per connect, not per message.
pub const BCRYPT_COST: u32 = 10;

/// The bcrypt hash of `password`, as nats-server's configuration takes it:
/// nats-server recognises hashes by the `$2a$` prefix only.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    bcrypt::hash_with_result(password, BCRYPT_COST)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| HashError(e.to_string()))
}

/// A fresh account nkey for the auth callout: its seed (secret, for the
/// auth service) and its public key (the `issuer` of the server config).
pub fn new_callout_key() -> Result<(String, String), HashError> {
    let kp = nkeys::KeyPair::new_account();
    let seed = kp.seed().map_err(|e| HashError(e.to_string()))?;
    Ok((seed, kp.public_key()))
}

/// The public key of a callout seed.
pub fn callout_public_key(seed: &str) -> Result<String, HashError> {
    nkeys::KeyPair::from_seed(seed.trim())
        .map(|kp| kp.public_key())
        .map_err(|e| HashError(format!("not an account nkey seed: {e}")))
}

/// A fresh random password (32 bytes, base64url).
pub fn random_password() -> Result<String, HashError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| HashError(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The nats-server `authorization { … }` block for `users`. Connections
/// without valid credentials are refused; each user gets its role's
/// permissions. With `callout_issuer` (the public account nkey whose seed
/// the auth service holds), every other connection is decided by the auth
/// service (auth callout): service accounts connect with their access
/// token and get read access to their granted rooms only.
pub fn render_authorization(users: &[UserEntry], callout_issuer: Option<&str>) -> String {
    let mut out = String::from("authorization {\n  timeout: 2\n  users: [\n");
    for u in users {
        let p = u.role.permissions();
        let _ = writeln!(
            out,
            "    {{\n      user: {}\n      password: {}\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n        allow_responses: true\n      }}\n    }}",
            quote(u.role.user()),
            quote(&u.bcrypt_hash),
            list(&p.publish),
            list(&p.subscribe),
        );
    }
    out.push_str("  ]\n");
    if let Some(issuer) = callout_issuer {
        let bypass: Vec<String> = users.iter().map(|u| u.role.user().to_string()).collect();
        let _ = writeln!(
            out,
            "  auth_callout {{\n    issuer: {}\n    auth_users: {}\n  }}",
            quote(issuer),
            list(&bypass)
        );
    }
    out.push_str("}\n");
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_service_role_may_touch_another_roles_inbox_or_everything() {
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
            let p = role.permissions();
            for s in p.publish.iter().chain(&p.subscribe) {
                assert_ne!(s, ">", "{role:?} has full access");
                assert!(
                    !s.starts_with("_INBOX.") || s.starts_with(&role.inbox_prefix()),
                    "{role:?} reaches {s}"
                );
            }
        }
    }

    #[test]
    fn rendered_users_carry_hashes_and_their_permissions() {
        let conf = render_authorization(
            &[UserEntry {
                role: Role::Fanout,
                bcrypt_hash: "$2b$10$abc".into(),
            }],
            Some("AISSUER"),
        );
        assert!(conf.contains("issuer: \"AISSUER\""));
        assert!(conf.contains("auth_users: [\"fanout\"]"));
        assert!(conf.contains("user: \"fanout\""));
        assert!(conf.contains("password: \"$2b$10$abc\""));
        assert!(conf.contains("\"gw.*.deliver\""));
        assert!(!conf.contains("\"chat.room.*.msg\""));
    }

    #[test]
    fn hashes_use_the_prefix_nats_server_recognises() {
        let h = hash_password("pw").unwrap_or_default();
        assert!(h.starts_with("$2a$10$"), "{h}");
        assert!(bcrypt::verify("pw", &h).unwrap_or(false));
    }
}
