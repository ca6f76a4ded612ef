//! The README's first command, `./scripts/up`, as a newcomer runs it after
//! the test command built the workspace: it reuses that build (nothing is
//! relinked), its output carries no terminal colours when it is not a
//! terminal, the URL to open is the last line when the system is up, and
//! its NATS refuses clients without a login.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chat_testkit::free_port;

#[tokio::test]
async fn scripts_up_reuses_the_build_and_ends_with_the_url() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = chat_e2e::chat_bin();
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .expect("the test command builds the workspace's binaries first");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut up = Command::new("bash");
    // As from a plain shell: without what the test runner sets for this
    // test (CARGO_PKG_*, NEXTEST_*, …), which a build would see as changes.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
        ];
        if (key.starts_with("CARGO") || key.starts_with("NEXTEST") || key.starts_with("RUST"))
            && !keep.contains(&key.as_ref())
        {
            up.env_remove(key.as_ref());
        }
    }
    let nats_port = free_port();
    let mut child = up
        .arg(root.join("scripts/up"))
        .env("CHAT_NATS_PORT", nats_port.to_string())
        .env("CHAT_NATS_AUTH_DIR", dir.path().join("nats-auth"))
        .env("CHAT_NATS_STORE_DIR", dir.path().join("nats"))
        .env("CHAT_DATA_DIR", dir.path().join("data"))
        .env("CHAT_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "CHAT_GATEWAY_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run scripts/up");
    let group = nix::unistd::Pid::from_raw(-(i32::try_from(child.id()).expect("pid")));
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        let _read = stderr.read_to_string(&mut all);
        all
    });

    let end = Instant::now() + Duration::from_secs(300);
    let mut lines = Vec::new();
    let url_line = loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("chat: open ") => break line,
            Ok(line) => lines.push(line),
            Err(e) => panic!("no URL printed ({e}); stdout so far: {lines:?}"),
        }
    };
    let expected = format!("chat: open http://127.0.0.1:{port}/");
    assert_eq!(url_line, expected);
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .expect("the printed URL answers");
    assert_eq!(page.status(), 200);
    // The local NATS runs the production permission setup: no anonymous
    // clients, and the services got in with their own passwords.
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    assert!(
        async_nats::connect(&nats_url).await.is_err(),
        "the local NATS accepts anonymous clients"
    );
    let admin = std::fs::read_to_string(dir.path().join("nats-auth/admin.password"))
        .expect("admin password written");
    async_nats::ConnectOptions::with_user_and_password("admin".into(), admin.trim().into())
        .connect(&nats_url)
        .await
        .expect("admin logs in with the written password");
    // Nothing more is printed on stdout once the URL is out.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the URL is the last line"
    );

    let _stopped = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT);
    let waited = Instant::now() + Duration::from_secs(30);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < waited {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _killed = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let _reaped = child.wait();
    let stderr = errors.join().unwrap_or_default();
    let stdout = lines.join("\n");
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains('\u{1b}'),
            "{name} has terminal escapes although it is not a terminal:\n{text}"
        );
    }
    let after = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .expect("binary");
    assert_eq!(
        after, built,
        "scripts/up rebuilt the binary instead of reusing the workspace build:\n{stderr}"
    );
}
