//! `chat nats-setup <dir>`: the NATS identities of a local or small
//! deployment. Writes one random password per role (`<dir>/<role>.password`,
//! mode 0600, kept when it exists) and the nats-server `authorization`
//! block with their bcrypt hashes (`<dir>/authorization.conf`), rendered
//! from the permission table in `chat_platform::nats_security`, with the
//! auth callout's account key (`<dir>/callout.seed`, for the auth service).

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use chat_platform::nats_security::{self, Role, UserEntry};

/// Creates or refreshes the files under `dir`; returns the path of the
/// authorization block for nats-server's `include`/`-c`.
pub fn run(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut users = Vec::new();
    for role in Role::ALL {
        let file = dir.join(format!("{}.password", role.user()));
        let password = match std::fs::read_to_string(&file) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
            _ => {
                let p = nats_security::random_password()?;
                write_private(&file, &p)?;
                p
            }
        };
        users.push(UserEntry {
            role,
            bcrypt_hash: nats_security::hash_password(&password)?,
        });
    }
    // The auth callout's account key: auth signs with the seed, the
    // server trusts its public key.
    let seed_file = dir.join("callout.seed");
    let seed = match std::fs::read_to_string(&seed_file) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => {
            let (seed, _) = nats_security::new_callout_key()?;
            write_private(&seed_file, &seed)?;
            seed
        }
    };
    let issuer = nats_security::callout_public_key(&seed)?;
    let conf = dir.join("authorization.conf");
    write_private(
        &conf,
        &nats_security::render_authorization(&users, Some(&issuer)),
    )?;
    Ok(conf)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_across_runs_and_match_the_rendered_hashes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        run(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let pw = std::fs::read_to_string(dir.path().join("gateway.password"))
            .unwrap_or_else(|e| panic!("{e}"));
        let conf = run(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let again = std::fs::read_to_string(dir.path().join("gateway.password"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pw, again, "a second run must keep the password");
        let text = std::fs::read_to_string(conf).unwrap_or_else(|e| panic!("{e}"));
        let hash = text
            .split("user: \"gateway\"")
            .nth(1)
            .and_then(|rest| rest.split("password: \"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert!(bcrypt::verify(&pw, hash).unwrap_or(false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("gateway.password"))
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or_default();
            assert_eq!(mode, 0o600);
        }
    }
}
