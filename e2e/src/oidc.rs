//! A real OpenID provider for tests (`e2e/oidc/provider.mjs`, the npm
//! package `oidc-provider`, installed by the test command), and a browser
//! stand-in that drives the authorization code flow over HTTP: redirects
//! followed by hand, cookies kept per origin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The client the provider knows (the system under test is configured with it).
pub const CLIENT_ID: &str = "chat-test";
pub const CLIENT_SECRET: &str = "chat-test-secret";

fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// The provider process; killed on drop.
pub struct Provider {
    child: Child,
    pub issuer: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    /// Starts the provider with one client whose only redirect URI is
    /// `redirect_uri`, and waits until it serves its discovery document.
    pub async fn start(redirect_uri: &str) -> anyhow::Result<Self> {
        let dir = provider_dir();
        if !dir.join("node_modules/oidc-provider").exists() {
            bail!(
                "{}/node_modules is missing: run `npm ci --prefix e2e/oidc` (the test command does)",
                dir.display()
            );
        }
        let port = chat_testkit::free_port();
        let tmp = tempfile::tempdir()?;
        let log = tmp.path().join("provider.log");
        let child = Command::new("node")
            .arg(dir.join("provider.mjs"))
            .env("PORT", port.to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(
                tmp.path().join("err.log"),
            )?))
            .spawn()
            .context("spawn node (install Node.js)")?;
        let issuer = format!("http://127.0.0.1:{port}");
        let p = Self {
            child,
            issuer,
            log,
            _dir: tmp,
        };
        let url = format!("{}/.well-known/openid-configuration", p.issuer);
        chat_testkit::eventually(
            Duration::from_secs(20),
            "the OpenID provider serves",
            || {
                let url = url.clone();
                async move {
                    reqwest::get(&url)
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
        Ok(p)
    }

    /// The provider's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn control(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{path}: {}", r.status());
        }
        Ok(())
    }

    /// Who signs in next: `sub`, `email`, `email_verified`, `name`, `hd`.
    pub async fn next_account(&self, account: Value) -> anyhow::Result<()> {
        self.control("/test/next", account).await
    }

    /// How the next ID tokens are rewritten (`none` for honest ones).
    pub async fn mode(&self, mode: &str) -> anyhow::Result<()> {
        self.control("/test/mode", serde_json::json!({ "mode": mode }))
            .await
    }

    /// Takes the JWKS endpoint down (503) or up again.
    pub async fn jwks_up(&self, up: bool) -> anyhow::Result<()> {
        self.control("/test/jwks", serde_json::json!({ "up": up }))
            .await
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

/// A browser: cookies per origin, redirects followed by hand.
#[derive(Default)]
pub struct Browser {
    jars: HashMap<String, HashMap<String, String>>,
}

/// A response as the browser saw it.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub location: Option<String>,
    /// Raw `Set-Cookie` values.
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Page {
    /// The value this response set for cookie `name` (empty if cleared).
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|c| {
            let pair = c.split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

fn origin(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or_default().to_string()
}

impl Browser {
    /// One GET with this browser's cookies for that origin, no redirect.
    pub async fn get(&mut self, url: &str) -> anyhow::Result<Page> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let jar = self.jars.entry(origin(url)).or_default();
        let cookie = jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut req = http.get(url);
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| absolute(url, l));
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        for c in &set_cookies {
            let Some((k, v)) = c.split(';').next().and_then(|p| p.split_once('=')) else {
                continue;
            };
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if v.is_empty() || c.contains("Max-Age=0") || c.contains("max-age=0") {
                jar.remove(&k);
            } else {
                jar.insert(k, v);
            }
        }
        let body = resp.text().await.unwrap_or_default();
        Ok(Page {
            url: url.to_string(),
            status,
            location,
            set_cookies,
            body,
        })
    }

    /// Follows redirects from `url` until a response that is not one, or
    /// until the next hop would reach `stop_at` (returned unvisited as the
    /// last page's `location`). At most 20 hops.
    pub async fn follow(&mut self, url: &str, stop_at: Option<&str>) -> anyhow::Result<Page> {
        let mut page = self.get(url).await?;
        for _ in 0..20 {
            let Some(next) = page.location.clone() else {
                return Ok(page);
            };
            if !(300..400).contains(&page.status) {
                return Ok(page);
            }
            if stop_at.is_some_and(|s| next.starts_with(s)) {
                return Ok(page);
            }
            page = self.get(&next).await?;
        }
        bail!("more than 20 redirects from {url}")
    }

    /// A whole sign-in through the gateway at `base`: `/auth/login`, the
    /// provider, and the callback. Returns the callback's response (or
    /// the page where the flow stopped).
    pub async fn sign_in(&mut self, base: &str) -> anyhow::Result<Page> {
        let callback = format!("{base}/auth/callback");
        let at_provider = self
            .follow(&format!("{base}/auth/login"), Some(&callback))
            .await?;
        match at_provider.location.clone() {
            Some(cb) if cb.starts_with(&callback) => self.get(&cb).await,
            _ => Ok(at_provider),
        }
    }

    /// Runs the flow up to the callback URL without visiting it.
    pub async fn until_callback(&mut self, base: &str) -> anyhow::Result<String> {
        let callback = format!("{base}/auth/callback");
        let page = self
            .follow(&format!("{base}/auth/login"), Some(&callback))
            .await?;
        match page.location.clone() {
            Some(l) if l.starts_with(&callback) => Ok(l),
            _ => bail!("the flow did not reach the callback: {page:?}"),
        }
    }

    /// This browser's cookie `name` for `url`'s origin.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        self.jars
            .get(&origin(url))
            .and_then(|j| j.get(name))
            .cloned()
    }

    /// Sets cookie `name` for `url`'s origin (a response read elsewhere).
    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        self.jars
            .entry(origin(url))
            .or_default()
            .insert(name.to_string(), value.to_string());
    }

    /// Forgets cookie `name` for `url`'s origin.
    pub fn drop_cookie(&mut self, url: &str, name: &str) {
        if let Some(j) = self.jars.get_mut(&origin(url)) {
            j.remove(name);
        }
    }
}

/// `location` made absolute against `base_url`.
fn absolute(base_url: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme = base_url.split_once("://").map_or("http", |(s, _)| s);
    format!("{scheme}://{}{location}", origin(base_url))
}
