//! Rate limits of the sign-in and token endpoints, at their edges, through
//! the gateway: per client IP (the gateway tells auth the browser's
//! address) and per account.

use chat_e2e::System;
use serde_json::{Value, json};

async fn dev_login_from(
    sys: &System,
    source: [u8; 4],
    username: &str,
) -> (u16, Option<String>, Value) {
    let http = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .build()
        .expect("client");
    let resp = http
        .post(format!("{}/auth/dev/login", sys.http_url()))
        .json(&json!({ "username": username }))
        .send()
        .await
        .expect("login");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn one_address_gets_its_budget_of_sign_ins_and_others_are_not_affected() {
    let sys = System::start_with(&[("CHAT_AUTH_RATE_IP_PER_MIN", "3")])
        .await
        .expect("system");
    for i in 0..3 {
        let (status, _, body) = dev_login_from(&sys, [127, 0, 0, 1], &format!("u{i}")).await;
        assert_eq!(status, 200, "request {i} within the budget: {body}");
    }
    let (status, retry, body) = dev_login_from(&sys, [127, 0, 0, 1], "u3").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("rate_limited")),
        "{body}"
    );
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another address has its own budget.
    let (status, _, body) = dev_login_from(&sys, [127, 0, 0, 2], "u4").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn one_account_gets_its_budget_of_sign_ins_and_refreshes() {
    let sys = System::start_with(&[("CHAT_AUTH_RATE_ACCOUNT_PER_MIN", "3")])
        .await
        .expect("system");
    let login = sys.login("heidi").await.expect("login: 1 of 3");
    let mut refresh = login.refresh_token;
    let http = reqwest::Client::new();
    for n in 2..=4 {
        let resp = http
            .post(format!("{}/auth/token", sys.http_url()))
            .json(&json!({"grant_type": "refresh_token", "refresh_token": refresh}))
            .send()
            .await
            .expect("refresh");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if n <= 3 {
            assert_eq!(status, 200, "action {n} of 3: {body}");
            refresh = body["refresh_token"].as_str().expect("rotated").to_string();
        } else {
            assert_eq!(
                (status, &body["error"]["code"]),
                (429, &json!("rate_limited")),
                "{body}"
            );
        }
    }
    // The refused refresh did not use the token up: it still works later
    // (here: another account is unaffected meanwhile).
    sys.login("ivan").await.expect("another account");
}
