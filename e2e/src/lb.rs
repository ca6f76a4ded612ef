//! Real load balancers in front of gateways: nginx and HAProxy (the Debian
//! packages; the test command installs them), each run as an ordinary
//! process with a generated configuration in a temp directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// Which load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    fn binary(self) -> anyhow::Result<PathBuf> {
        let name = match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        };
        for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return Ok(p);
            }
        }
        bail!("{name} is not installed (the test command installs it with apt-get)")
    }
}

/// A running load balancer, killed on drop.
pub struct LoadBalancer {
    pub kind: Kind,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl LoadBalancer {
    /// Starts `kind` on a free port, balancing HTTP and WebSocket traffic
    /// over `backends`, and waits until it forwards `/readyz`.
    pub async fn start(kind: Kind, backends: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = chat_testkit::free_port();
        let bin = kind.binary()?;
        let mut cmd = Command::new(&bin);
        match kind {
            Kind::Nginx => {
                let conf = dir.path().join("nginx.conf");
                std::fs::write(&conf, nginx_conf(dir.path(), port, backends))?;
                cmd.arg("-p").arg(dir.path()).arg("-c").arg(&conf);
            }
            Kind::Haproxy => {
                let conf = dir.path().join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(port, backends))?;
                cmd.arg("-db").arg("-f").arg(&conf);
            }
        }
        let log = std::fs::File::create(dir.path().join("lb.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut lb = Self {
            kind,
            port,
            dir,
            child: Some(child),
        };
        lb.wait_ready().await?;
        Ok(lb)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("{:?} exited with {status}: {}", self.kind, self.log());
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.http_url())).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > end {
                bail!("{:?} not forwarding within 20s: {}", self.kind, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its log (for failure messages).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("lb.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default());
        s
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _killed = c.kill();
            let _reaped = c.wait();
        }
    }
}

/// nginx: round robin, WebSocket upgrade passed through, a failed backend
/// skipped (`proxy_next_upstream`) and rested for 2 s.
fn nginx_conf(dir: &Path, port: u16, backends: &[SocketAddr]) -> String {
    let d = dir.display();
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream gateways {{
{servers}  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_next_upstream error timeout http_502 http_503;
    }}
  }}
}}
"#
    )
}

/// HAProxy: round robin, `/readyz` health checks every 500 ms, a request
/// that cannot connect redispatched to another backend.
fn haproxy_conf(port: u16, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server gw{i} {b} check inter 500ms fall 1 rise 1\n"))
        .collect();
    format!(
        r#"global
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  retries 3
  option redispatch
frontend chat
  bind 127.0.0.1:{port}
  default_backend gateways
backend gateways
  balance roundrobin
  option httpchk GET /readyz
{servers}"#
    )
}
