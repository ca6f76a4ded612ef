//! Which browser origins may open a WebSocket: the configured list
//! (`CHAT_GATEWAY_ALLOWED_ORIGINS`), else the origin of the gateway's public
//! URL. Origins are compared whole (scheme, host and port), never by the
//! `Host` header the client sends, so a DNS-rebinding page on
//! `http://evil.example:8080` is refused even when it sends
//! `Host: evil.example:8080`.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Uri, header};

/// The origins a gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins {
    any: bool,
    list: Vec<String>,
}

impl AllowedOrigins {
    /// From the configured list (`*` allows any) or, when it is empty, the
    /// public URL's origin; for a loopback public URL the other loopback
    /// spellings (`localhost`, `127.0.0.1`, `[::1]`) on the same port too.
    pub fn resolve(configured: &[String], public_url: &str) -> Self {
        if configured.iter().any(|o| o == "*") {
            return Self {
                any: true,
                list: Vec::new(),
            };
        }
        let mut list: Vec<String> = configured.iter().filter_map(|o| normalize(o)).collect();
        if list.is_empty()
            && let Some(own) = normalize(public_url)
        {
            list.extend(loopback_aliases(&own));
            list.push(own);
        }
        list.sort();
        list.dedup();
        Self { any: false, list }
    }

    /// Whether a request may upgrade. Requests without `Origin` are not
    /// from a browser (apps, services) and pass; `Origin: null` and
    /// unparseable origins do not.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        if self.any {
            return true;
        }
        let Some(origin) = origin.to_str().ok().and_then(normalize) else {
            return false;
        };
        self.list.contains(&origin)
    }

    /// The accepted origins (for the start-up log).
    pub fn describe(&self) -> String {
        if self.any {
            "*".into()
        } else {
            self.list.join(",")
        }
    }
}

/// The URL people open: `CHAT_GATEWAY_PUBLIC_URL`, else `http://` + the
/// bound address (`127.0.0.1` when bound to all interfaces), with no
/// trailing slash.
pub fn public_url(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_string();
    }
    let ip = if bound.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        bound.ip()
    };
    format!("http://{}", SocketAddr::new(ip, bound.port()))
}

/// `scheme://host[:port]` in lower case, without a default port; `None`
/// for anything that is not an absolute origin (a path, `null`, garbage).
pub fn normalize(raw: &str) -> Option<String> {
    let uri: Uri = raw.trim().trim_end_matches('/').parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match authority.port_u16() {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn loopback_aliases(origin: &str) -> Vec<String> {
    let Ok(uri) = origin.parse::<Uri>() else {
        return Vec::new();
    };
    let Some(authority) = uri.authority() else {
        return Vec::new();
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Vec::new();
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = authority
        .port_u16()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .map(|h| format!("{scheme}://{h}{port}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().expect("host"));
        h.insert(header::ORIGIN, origin.parse().expect("origin"));
        h
    }

    #[test]
    fn a_page_whose_origin_matches_its_own_host_header_is_still_refused() {
        // DNS rebinding: the attacker's page is served from the attacker's
        // name, which now resolves to the gateway; Host and Origin agree.
        let o = AllowedOrigins::resolve(&[], "http://127.0.0.1:8080");
        assert!(!o.allows(&with_origin(
            "http://evil.example:8080",
            "evil.example:8080"
        )));
        assert!(o.allows(&with_origin("http://127.0.0.1:8080", "127.0.0.1:8080")));
        assert!(o.allows(&with_origin("http://localhost:8080", "localhost:8080")));
        assert!(!o.allows(&with_origin("http://localhost:8081", "localhost:8080")));
    }

    #[test]
    fn the_scheme_is_part_of_the_origin() {
        let o = AllowedOrigins::resolve(&[], "https://chat.example");
        assert!(o.allows(&with_origin("https://chat.example", "chat.example")));
        assert!(o.allows(&with_origin("https://CHAT.example:443", "chat.example")));
        assert!(!o.allows(&with_origin("http://chat.example", "chat.example")));
        assert!(!o.allows(&with_origin("https://chat.example:8443", "chat.example")));
    }

    #[test]
    fn a_configured_list_replaces_the_default_and_star_allows_any() {
        let list = vec!["https://app.example/".to_string()];
        let o = AllowedOrigins::resolve(&list, "http://127.0.0.1:8080");
        assert!(o.allows(&with_origin("https://app.example", "gw")));
        assert!(!o.allows(&with_origin("http://127.0.0.1:8080", "127.0.0.1:8080")));
        let any = AllowedOrigins::resolve(&["*".to_string()], "http://x");
        assert!(any.allows(&with_origin("https://whatever.example", "gw")));
    }

    #[test]
    fn null_and_garbage_origins_are_refused_and_no_origin_passes() {
        let o = AllowedOrigins::resolve(&[], "http://127.0.0.1:8080");
        for bad in ["null", "127.0.0.1:8080", "http://127.0.0.1:8080/path", "x"] {
            assert!(!o.allows(&with_origin(bad, "127.0.0.1:8080")), "{bad}");
        }
        assert!(o.allows(&HeaderMap::new()), "not a browser");
    }

    #[test]
    fn the_public_url_defaults_to_the_bound_address() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(public_url(None, any), "http://127.0.0.1:8080");
        let lo: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert_eq!(public_url(None, lo), "http://127.0.0.1:9");
        assert_eq!(
            public_url(Some("https://chat.example/"), lo),
            "https://chat.example"
        );
    }
}
