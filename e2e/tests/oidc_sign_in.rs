//! Sign-in with a real OpenID provider (`oidc-provider`, configured like
//! Google) through the gateway, over HTTP as a browser does it: the happy
//! path, then every way a sign-in must fail without creating a session.

use chat_e2e::System;
use chat_e2e::oidc::{Browser, CLIENT_ID, CLIENT_SECRET, Page, Provider};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// A system whose auth signs in with `provider`, on a fixed gateway port
/// (the provider knows the redirect URI).
async fn system(port: u16, provider: &Provider, extra: &[(&str, &str)]) -> System {
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    let listen = format!("127.0.0.1:{port}");
    let mut opts: Vec<(&str, &str)> = vec![
        ("CHAT_GATEWAY_LISTEN", &listen),
        ("CHAT_AUTH_DEV_LOGIN", "false"),
        ("CHAT_AUTH_OIDC_ISSUER", &provider.issuer),
        ("CHAT_AUTH_OIDC_CLIENT_ID", CLIENT_ID),
        ("CHAT_AUTH_OIDC_CLIENT_SECRET", CLIENT_SECRET),
        ("CHAT_AUTH_OIDC_REDIRECT_URI", &redirect),
    ];
    opts.extend_from_slice(extra);
    System::start_with(&opts).await.expect("system")
}

fn no_session(page: &Page, what: &str) {
    assert!(
        page.cookie("chat_refresh").is_none_or(|v| v.is_empty()),
        "{what}: a session cookie was set: {page:?}"
    );
}

fn refused(page: &Page, what: &str, status: u16) {
    assert_eq!(page.status, status, "{what}: {page:?}");
    no_session(page, what);
}

/// The access token for the browser's refresh cookie (as the web client
/// gets it after the redirect); the rotated cookie goes back in the jar.
async fn access_token(sys: &System, browser: &mut Browser) -> (u16, Value) {
    let refresh = browser
        .cookie(&sys.http_url(), "chat_refresh")
        .unwrap_or_default();
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/token", sys.http_url()))
        .header("cookie", format!("chat_refresh={refresh}"))
        .header("x-chat-csrf", "1")
        .json(&json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .expect("token");
    let status = resp.status().as_u16();
    let rotated = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()?
                .strip_prefix("chat_refresh=")
                .map(str::to_string)
        });
    if let Some(v) = rotated {
        browser.set_cookie(&sys.http_url(), "chat_refresh", &v);
    }
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn account(sub: &str, email: &str) -> Value {
    json!({"sub": sub, "email": email, "email_verified": true, "name": "Ann Example", "hd": "example.com"})
}

#[tokio::test]
async fn a_person_signs_in_through_the_provider_and_gets_a_session() {
    let port = chat_testkit::free_port();
    let provider = Provider::start(&format!("http://127.0.0.1:{port}/auth/callback"))
        .await
        .expect("provider");
    let sys = system(
        port,
        &provider,
        &[("CHAT_AUTH_OIDC_ALLOWED_DOMAINS", "example.com")],
    )
    .await;
    provider
        .next_account(account("sub-ann", "ann@example.com"))
        .await
        .expect("next");

    let mut browser = Browser::default();
    let page = browser.sign_in(&sys.http_url()).await.expect("flow");
    let home = format!("{}/", sys.http_url());
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some(home.as_str())),
        "{page:?}"
    );
    assert!(
        !page.url.contains("crt_") && !page.url.contains("eyJ"),
        "token in a URL"
    );
    let refresh = page.cookie("chat_refresh").expect("refresh cookie");
    assert!(refresh.starts_with("crt_"));
    let (status, body) = access_token(&sys, &mut browser).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("access token");
    assert_eq!(body["user"]["name"], "Ann Example");
    let (_ws, welcome) = WsClient::connect_as(&sys.ws_url(), token)
        .await
        .expect("hello");
    let user = welcome["user"].as_str().expect("user").to_string();
    assert_eq!(body["user"]["id"], user.as_str());

    // The same (issuer, subject) is the same user; the same email under
    // another subject is another user (never matched by email).
    let mut again = Browser::default();
    again.sign_in(&sys.http_url()).await.expect("again");
    let (_, body) = access_token(&sys, &mut again).await;
    assert_eq!(body["user"]["id"], user.as_str());
    provider
        .next_account(account("sub-impostor", "ann@example.com"))
        .await
        .expect("next");
    let mut other = Browser::default();
    other.sign_in(&sys.http_url()).await.expect("other");
    let (_, body) = access_token(&sys, &mut other).await;
    assert_ne!(body["user"]["id"], user.as_str(), "matched by email");
}

#[tokio::test]
async fn hostile_id_tokens_and_broken_flows_create_no_session() {
    let port = chat_testkit::free_port();
    let provider = Provider::start(&format!("http://127.0.0.1:{port}/auth/callback"))
        .await
        .expect("provider");
    let sys = system(
        port,
        &provider,
        &[("CHAT_AUTH_OIDC_ALLOWED_DOMAINS", "example.com")],
    )
    .await;
    let base = sys.http_url();
    provider
        .next_account(account("sub-bob", "bob@example.com"))
        .await
        .expect("next");

    // Every rewrite of the ID token is refused.
    // Each is refused for its own reason, not by accident.
    for (mode, reason) in [
        ("wrong_aud", "audience"),
        ("multi_aud_wrong_azp", "audience"),
        ("wrong_iss", "issuer"),
        ("expired", "expired"),
        ("wrong_nonce", "nonce"),
        ("tampered", "signature"),
        ("alg_none", "signature"),
        ("hs256_pubkey", "signature"),
        ("unknown_kid", "unknown key"),
    ] {
        provider.mode(mode).await.expect("mode");
        let page = Browser::default().sign_in(&base).await.expect("flow");
        refused(&page, mode, 401);
        assert!(
            page.body.to_lowercase().contains(reason),
            "{mode}: {}",
            page.body
        );
    }
    provider.mode("none").await.expect("honest again");

    // Claims we refuse even when the token is genuine.
    for (what, reason, acct) in [
        (
            "email_verified=false",
            "not verified",
            json!({"sub": "s1", "email": "x@example.com", "email_verified": false, "name": "X", "hd": "example.com"}),
        ),
        (
            "disallowed hd",
            "domain",
            json!({"sub": "s2", "email": "x@evil.example", "email_verified": true, "name": "X", "hd": "evil.example"}),
        ),
    ] {
        provider.next_account(acct).await.expect("next");
        let page = Browser::default().sign_in(&base).await.expect("flow");
        refused(&page, what, 401);
        assert!(page.body.contains(reason), "{what}: {}", page.body);
    }
    provider
        .next_account(account("sub-bob", "bob@example.com"))
        .await
        .expect("next");

    // Missing or wrong state, and a callback from another browser.
    let mut b = Browser::default();
    let cb = b.until_callback(&base).await.expect("to callback");
    let without_state = cb
        .split('&')
        .filter(|p| !p.starts_with("state="))
        .collect::<Vec<_>>()
        .join("&");
    let without_state = without_state.replace("?state=", "?");
    refused(
        &b.get(&without_state).await.expect("get"),
        "missing state",
        401,
    );
    let mut b = Browser::default();
    let cb = b.until_callback(&base).await.expect("to callback");
    let wrong = format!("{base}/auth/callback?code=whatever&state=not-a-state");
    refused(&b.get(&wrong).await.expect("get"), "wrong state", 401);
    let mut other_browser = Browser::default();
    refused(
        &other_browser.get(&cb).await.expect("get"),
        "another browser",
        401,
    );

    // A replayed callback (state used) and a replayed authorization code.
    let mut b = Browser::default();
    let cb = b.until_callback(&base).await.expect("to callback");
    let ok = b.get(&cb).await.expect("callback");
    assert_eq!(ok.status, 303, "{ok:?}");
    let mut replay = Browser::default();
    let cb2 = replay.until_callback(&base).await.expect("second flow");
    refused(&b.get(&cb).await.expect("replay"), "replayed callback", 401);
    let code = |u: &str| {
        u.split(['?', '&'])
            .find_map(|p| p.strip_prefix("code="))
            .unwrap_or_default()
            .to_string()
    };
    let reused = cb2.replace(&code(&cb2), &code(&cb));
    refused(
        &replay.get(&reused).await.expect("reused code"),
        "replayed code",
        401,
    );

    let metric = sys.metric("chat_auth_logins_total").await.expect("metric");
    assert_eq!(metric, 1.0, "exactly the one good sign-in counted");
}

#[tokio::test]
async fn a_redirect_uri_that_is_not_an_exact_match_gets_no_code() {
    let port = chat_testkit::free_port();
    // The provider has the URI with a trailing slash registered.
    let provider = Provider::start(&format!("http://127.0.0.1:{port}/auth/callback/"))
        .await
        .expect("provider");
    let sys = system(port, &provider, &[]).await;
    let page = Browser::default()
        .sign_in(&sys.http_url())
        .await
        .expect("flow");
    assert_eq!(page.status, 400, "the provider must refuse: {page:?}");
    assert!(page.location.is_none());
    no_session(&page, "inexact redirect URI");
}

#[tokio::test]
async fn with_the_providers_keys_unavailable_sign_in_fails_closed_and_sessions_continue() {
    let port = chat_testkit::free_port();
    let provider = Provider::start(&format!("http://127.0.0.1:{port}/auth/callback"))
        .await
        .expect("provider");
    let sys = system(port, &provider, &[]).await;
    // A session from before the outage.
    let mut before = Browser::default();
    assert_eq!(
        before.sign_in(&sys.http_url()).await.expect("flow").status,
        303
    );
    let (status, body) = access_token(&sys, &mut before).await;
    assert_eq!(status, 200);
    let (mut ws, _) =
        WsClient::connect_as(&sys.ws_url(), body["access_token"].as_str().expect("t"))
            .await
            .expect("connect");

    provider.jwks_up(false).await.expect("jwks down");
    // A token naming a key we do not have cached needs the JWKS: refused.
    provider.mode("unknown_kid").await.expect("mode");
    let page = Browser::default()
        .sign_in(&sys.http_url())
        .await
        .expect("flow");
    assert!(matches!(page.status, 401 | 503), "{page:?}");
    no_session(&page, "jwks down");

    // The existing session lives on: its socket, and its refresh.
    ws.send_json(&json!({"type": "ping", "id": "p"}))
        .await
        .expect("ping");
    assert_eq!(ws.recv_type("pong").await.expect("pong")["id"], "p");
    let (status, _) = access_token(&sys, &mut before).await;
    assert_eq!(status, 200, "refresh needs no provider");
}
