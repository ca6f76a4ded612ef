//! The signing key file: read it, or create it (mode 0600) on first start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chat_jwt::{KeyError, KeyPair};

/// Why the signing key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(
        "signing key file {0} (CHAT_AUTH_KEY_FILE) does not exist and CHAT_AUTH_GENERATE_KEY is false"
    )]
    Missing(PathBuf),
    #[error("cannot read signing key file {path} (CHAT_AUTH_KEY_FILE): {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write signing key file {path} (CHAT_AUTH_KEY_FILE): {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("signing key file {path} (CHAT_AUTH_KEY_FILE): {source}")]
    Key { path: PathBuf, source: KeyError },
}

/// Reads the key at `path`, or generates and writes one if it is missing and
/// `generate` is set. Blocking (file I/O): call from `spawn_blocking`.
pub fn load_or_generate(path: &Path, generate: bool) -> Result<KeyPair, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => read(path, &pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if generate {
                create(path)
            } else {
                Err(KeyFileError::Missing(path.to_path_buf()))
            }
        }
        Err(e) => Err(KeyFileError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn read(path: &Path, pem: &str) -> Result<KeyPair, KeyFileError> {
    let key = KeyPair::from_pkcs8_pem(pem).map_err(|source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    })?;
    warn_if_readable_by_others(path);
    tracing::info!(path = %path.display(), kid = key.kid(), "signing key loaded");
    Ok(key)
}

/// Writes a fresh key with `create_new`, so two replicas starting at once on
/// a shared volume cannot overwrite each other: the loser reads the winner's.
fn create(path: &Path) -> Result<KeyPair, KeyFileError> {
    let write_err = |e: std::io::Error| KeyFileError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let key_err = |source| KeyFileError::Key {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let key = KeyPair::generate().map_err(key_err)?;
    let pem = key.to_pkcs8_pem().map_err(key_err)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_or_generate(path, false);
        }
        Err(e) => return Err(write_err(e)),
    };
    file.write_all(pem.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    tracing::info!(path = %path.display(), kid = key.kid(), "generated a new signing key");
    Ok(key)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "signing key file is readable by group or others; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_generated_private_and_then_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/key.pem");
        let first = load_or_generate(&path, true).expect("generated");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = load_or_generate(&path, true).expect("loaded");
        assert_eq!(first.kid(), second.kid());
    }

    #[test]
    fn a_missing_key_without_generation_is_an_error_naming_the_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_or_generate(&dir.path().join("key.pem"), false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("CHAT_AUTH_KEY_FILE") && err.contains("CHAT_AUTH_GENERATE_KEY"));
    }

    /// What `openssl pkey` prints for `args` on the key at `path`.
    fn openssl_pkey(path: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("openssl")
            .arg("pkey")
            .arg("-in")
            .arg(path)
            .args(args)
            .output()
            .expect("openssl is installed (the test command needs it)")
    }

    #[test]
    fn a_generated_key_file_is_read_by_openssl_with_the_same_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        let key = load_or_generate(&path, true).expect("generated");
        let out = openssl_pkey(&path, &["-noout"]);
        assert!(
            out.status.success(),
            "openssl cannot read the key file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The public key OpenSSL derives is the one our JWKS publishes.
        let der = openssl_pkey(&path, &["-pubout", "-outform", "DER"]);
        assert!(der.status.success());
        let public = der.stdout.get(der.stdout.len().saturating_sub(32)..);
        let x = key.jwk().x.expect("x");
        use base64::Engine as _;
        let ours = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .expect("base64url");
        assert_eq!(public, Some(ours.as_slice()));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(
            load_or_generate(&path, true),
            Err(KeyFileError::Key { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "not a key");
    }
}
