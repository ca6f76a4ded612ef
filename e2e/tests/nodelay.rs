//! "No socket waits on Nagle", checked: the all-in-one `chat` binary runs
//! under `strace`, a client signs in through the gateway's auth forward,
//! opens a WebSocket and sends a message (so every kind of TCP socket the
//! system uses exists: accepted HTTP and WebSocket sockets, the NATS
//! clients, the forward to auth, the JWKS fetch), and every TCP socket that
//! carried traffic must have had `TCP_NODELAY` set before it was closed
//! (or the process stopped). A socket carried traffic when it was accepted
//! or its connect succeeded (at once, or `SO_ERROR` 0 after `EINPROGRESS`):
//! listening sockets and connects that were refused or abandoned while a
//! peer starts never carry a byte, and the HTTP client sets the option only
//! on a connected stream.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use chat_testkit::{NatsServer, WsClient};

/// What the trace says about one file descriptor.
#[derive(Debug, Default, Clone)]
struct Fd {
    tcp: bool,
    nodelay: bool,
    /// Accepted, or its connect succeeded.
    connected: bool,
    /// The syscall that made it a connected TCP socket.
    origin: String,
}

/// TCP sockets (by their syscall line) that carried traffic without
/// `TCP_NODELAY`.
fn without_nodelay(trace: &str) -> Vec<String> {
    let mut fds: HashMap<i64, Fd> = HashMap::new();
    let mut bad = Vec::new();
    let result_fd = |line: &str| -> Option<i64> {
        line.rsplit_once(") = ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .filter(|fd: &i64| *fd >= 0)
    };
    let first_arg = |line: &str| -> Option<i64> {
        line.split_once('(')
            .and_then(|(_, rest)| rest.split([',', ')']).next())
            .and_then(|a| a.trim().parse().ok())
    };
    // Calls interrupted by another thread's are split in two lines:
    // "accept4(7, <unfinished ...>" and "<... accept4 resumed>…) = 9".
    let mut unfinished: HashMap<String, String> = HashMap::new();
    for raw in trace.lines() {
        // `-f` prefixes the thread id: "1234  socket(...) = 7".
        let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        let (tid, rest) = raw.split_at(digits);
        let rest = rest.trim_start();
        let joined;
        let line = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            unfinished.insert(tid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let tail = rest.split_once("resumed>").map_or("", |(_, t)| t);
            joined = format!("{}{tail}", unfinished.remove(tid).unwrap_or_default());
            joined.as_str()
        } else {
            rest
        };
        let inet = line.contains("AF_INET") && line.contains("SOCK_STREAM");
        if line.starts_with("socket(") && inet {
            if let Some(fd) = result_fd(line) {
                fds.insert(
                    fd,
                    Fd {
                        tcp: true,
                        origin: line.to_string(),
                        ..Fd::default()
                    },
                );
            }
        } else if line.starts_with("accept4(") || line.starts_with("accept(") {
            if let Some(fd) = result_fd(line)
                && (line.contains("AF_INET") || line.contains("sin_port"))
            {
                fds.insert(
                    fd,
                    Fd {
                        tcp: true,
                        connected: true,
                        origin: line.to_string(),
                        ..Fd::default()
                    },
                );
            }
        } else if line.starts_with("connect(") {
            if let Some(f) = first_arg(line).and_then(|fd| fds.get_mut(&fd)) {
                f.connected |= line.ends_with(") = 0");
            }
        } else if line.starts_with("getsockopt(") && line.contains("SO_ERROR") {
            if let Some(f) = first_arg(line).and_then(|fd| fds.get_mut(&fd)) {
                f.connected |= line.contains("SO_ERROR, [0]");
            }
        } else if line.starts_with("setsockopt(")
            && line.contains("TCP_NODELAY")
            && line.contains("[1]")
        {
            if let Some(f) = first_arg(line).and_then(|fd| fds.get_mut(&fd)) {
                f.nodelay = true;
            }
        } else if line.starts_with("close(")
            && let Some(fd) = first_arg(line)
            && let Some(f) = fds.remove(&fd)
            && f.tcp
            && f.connected
            && !f.nodelay
        {
            bad.push(f.origin);
        }
    }
    bad.extend(
        fds.into_values()
            .filter(|f| f.tcp && f.connected && !f.nodelay)
            .map(|f| f.origin),
    );
    bad
}

#[test]
fn the_trace_reader_finds_a_socket_without_nodelay() {
    let trace = "\
10  socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, IPPROTO_TCP) = 7
10  listen(7, 1024) = 0
10  accept4(7, {sa_family=AF_INET, sin_port=htons(5000)}, [16], SOCK_CLOEXEC) = 9
11  setsockopt(9, SOL_TCP, TCP_NODELAY, [1], 4) = 0
10  accept4(7, <unfinished ...>
11  close(3) = 0
10  <... accept4 resumed>{sa_family=AF_INET, sin_port=htons(5001)}, [16], SOCK_CLOEXEC) = 10
10  close(10) = 0
12345 socket(AF_INET6, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 11
12345 setsockopt(11, SOL_TCP, TCP_NODELAY, [1], 4) = 0
12345 close(11) = 0
12345 socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 12
12345 connect(12, {sa_family=AF_INET, sin_port=htons(4222)}, 16) = 0
12345 setsockopt(12, SOL_TCP, TCP_NODELAY, [0], 4) = 0
13  socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 13
13  connect(13, {sa_family=AF_INET, sin_port=htons(1)}, 16) = -1 EINPROGRESS (Operation now in progress)
13  getsockopt(13, SOL_SOCKET, SO_ERROR, [ECONNREFUSED], [4]) = 0
13  close(13) = 0
13  socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 14
13  connect(14, {sa_family=AF_INET, sin_port=htons(1)}, 16) = -1 ECONNREFUSED (Connection refused)
13  close(14) = 0
13  socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 15
13  connect(15, {sa_family=AF_INET, sin_port=htons(2)}, 16) = -1 EINPROGRESS (Operation now in progress)
13  getsockopt(15, SOL_SOCKET, SO_ERROR, [0], [4]) = 0
13  close(15) = 0
";
    let bad = without_nodelay(trace);
    assert_eq!(
        bad.len(),
        3,
        "refused connects are exempt, a connected one is not: {bad:?}"
    );
    assert!(bad[0].contains("5001"), "{bad:?}");
    assert!(
        bad[1].contains("= 15"),
        "a connected socket closed without nodelay: {bad:?}"
    );
    assert!(
        bad[2].contains("= 12"),
        "nodelay switched off is not on: {bad:?}"
    );
}

#[tokio::test]
async fn every_tcp_socket_of_the_system_sets_nodelay() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is missing: the test command installs it (apt-get install strace)");
    }
    let nats = NatsServer::start().await.expect("nats");
    let data = tempfile::tempdir().expect("dir");
    let trace = data.path().join("trace");
    let port = chat_testkit::free_port();
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=socket,connect,accept,accept4,getsockopt,setsockopt,close",
        "-o",
    ])
    .arg(&trace)
    .arg(chat_e2e::chat_bin());
    for (k, v) in chat_e2e::base_env(&nats.url(), data.path()) {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("CHAT_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace the chat binary");
    // `chat` prints its URL once every service is ready (the gateway's own
    // `/readyz` says nothing of history's).
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("chat: open ") {
                    let _told = up_tx.send(());
                }
            }
        });
    }
    let base = format!("http://127.0.0.1:{port}");
    let ready = tokio::task::spawn_blocking(move || up_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r.map_err(|_| anyhow::anyhow!("chat did not print its URL within 60 s")));
    let traffic = async {
        ready?;
        let login = chat_e2e::login(&base, "nagle").await?;
        let (mut c, _) =
            WsClient::connect_as(&format!("ws://127.0.0.1:{port}/ws"), &login.token).await?;
        let room = chat_e2e::create_room(&mut c, "r").await?;
        chat_e2e::send(&mut c, &room, "m1", "hi").await?;
        anyhow::Ok(())
    }
    .await;
    // Stop `chat` itself (strace's child); strace ends with it.
    let strace_pid = child.id();
    let chat_pid =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
            });
    if let Some(pid) = chat_pid {
        let _stopped = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let waited = tokio::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && tokio::time::Instant::now() < waited {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(pid) = chat_pid {
        let _killed = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _killed = child.kill();
    let _reaped = child.wait();
    traffic.expect("sign in, connect and send through the traced system");
    let text = std::fs::read_to_string(&trace).expect("trace");
    let sockets = text
        .lines()
        .filter(|l| {
            l.contains("accept4(") || (l.contains("socket(AF_INET") && l.contains("SOCK_STREAM"))
        })
        .count();
    assert!(
        sockets >= 8,
        "the trace saw only {sockets} TCP sockets:\n{text}"
    );
    let bad = without_nodelay(&text);
    assert!(
        bad.is_empty(),
        "TCP sockets without TCP_NODELAY:\n{}",
        bad.join("\n")
    );
}
