//! Service accounts end to end: credentials from the operator CLI, scoped
//! tokens from the client-credentials grant, the gateway enforcing the
//! scopes, and the example bot (`examples/echo-bot`) answering in its room.

use std::process::{Command, Stdio};

use chat_e2e::{System, create_room};
use chat_testkit::WsClient;
use serde_json::{Value, json};

/// Runs `chat-auth service-account <args>` on the system's auth database.
fn cli(sys: &System, args: &[&str]) -> Value {
    let out = Command::new(chat_e2e::deploy::bin_dir().join("chat-auth"))
        .arg("service-account")
        .args(args)
        .env("CHAT_AUTH_DB", sys.data.path().join("auth.db"))
        .stdin(Stdio::null())
        .output()
        .expect("run chat-auth");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn create(sys: &System, name: &str, scopes: &[&str]) -> (String, String, String) {
    let mut args = vec!["create", "--name", name];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let v = cli(sys, &args);
    let s = |k: &str| v[k].as_str().expect(k).to_string();
    (s("client_id"), s("client_secret"), s("user"))
}

async fn token(sys: &System, id: &str, secret: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/token", sys.http_url()))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}),
        )
        .send()
        .await
        .expect("token");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_service_account_gets_scoped_tokens_and_bad_credentials_get_nothing() {
    let sys = System::start().await.expect("system");
    let (id, secret, user) = create(&sys, "Bot", &["rooms:post", "room:r1"]);
    let (status, body) = token(&sys, &id, &secret).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "rooms:post room:r1");
    assert_eq!(body["user"]["id"], user.as_str());
    assert!(
        body.get("refresh_token").is_none(),
        "client credentials get no refresh token"
    );

    // The standard form encoding with HTTP Basic client authentication.
    let form = reqwest::Client::new()
        .post(format!("{}/auth/token", sys.http_url()))
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("form");
    assert_eq!(form.status().as_u16(), 200);

    for (what, cid, sec) in [
        ("wrong secret", id.as_str(), "css_wrong"),
        ("unknown client", "sa_nobody", secret.as_str()),
    ] {
        let (status, body) = token(&sys, cid, sec).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &json!("invalid_client")),
            "{what}: {body}"
        );
    }
    // A token can be narrowed to some of the scopes, never widened.
    let narrowed = reqwest::Client::new()
        .post(format!("{}/auth/token", sys.http_url()))
        .json(&json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret, "scope": "rooms:post room:r2"}))
        .send()
        .await
        .expect("widen");
    assert_eq!(
        narrowed.status().as_u16(),
        400,
        "a scope beyond the account's was granted"
    );
    cli(&sys, &["disable", &id]);
    let (status, _) = token(&sys, &id, &secret).await;
    assert_eq!(status, 401, "a disabled account still gets tokens");
}

/// Sends `frame` and returns the reply carrying its `id`.
async fn reply(bot: &mut WsClient, frame: Value) -> Value {
    let id = frame["id"].clone();
    bot.send_json(&frame).await.expect("send");
    bot.recv_where(|v| v["id"] == id).await.expect("reply")
}

#[tokio::test]
async fn a_bot_granted_room_a_cannot_act_in_room_b() {
    let sys = System::start().await.expect("system");
    let (mut alice, _) = sys.client("alice").await.expect("alice");
    let a = create_room(&mut alice, "a").await.expect("room a");
    let b = create_room(&mut alice, "b").await.expect("room b");
    let grant = format!("room:{a}");
    let (id, secret, _) = create(&sys, "Bot", &["rooms:join", "rooms:post", &grant]);
    let (_, body) = token(&sys, &id, &secret).await;
    let (mut bot, _) =
        WsClient::connect_as(&sys.ws_url(), body["access_token"].as_str().expect("token"))
            .await
            .expect("bot connects");

    let joined = reply(
        &mut bot,
        json!({"type": "room.join", "id": "j1", "room": a}),
    )
    .await;
    assert_eq!(joined["type"], "room.joined", "{joined}");
    let sent = reply(
        &mut bot,
        json!({"type": "send", "id": "m1", "room": a, "text": "hi"}),
    )
    .await;
    assert_eq!(sent["type"], "ack", "{sent}");
    for frame in [
        json!({"type": "room.join", "id": "j2", "room": b}),
        json!({"type": "send", "id": "m2", "room": b, "text": "hi"}),
        json!({"type": "history", "id": "h1", "room": a}),
        json!({"type": "room.create", "id": "c1", "name": "mine"}),
    ] {
        let r = reply(&mut bot, frame.clone()).await;
        assert_eq!(
            (&r["type"], &r["code"]),
            (&json!("error"), &json!("forbidden")),
            "{frame} → {r}"
        );
    }
    // And no way around the gateway: NATS refuses clients without one of
    // the service logins (ADR 0006).
    let nats = sys.nats.as_ref().expect("own nats");
    assert!(async_nats::connect(nats.url()).await.is_err());
}

#[tokio::test]
async fn the_example_bot_answers_in_its_room() {
    let sys = System::start().await.expect("system");
    let (mut alice, login) = sys.client("alice").await.expect("alice");
    let room = create_room(&mut alice, "echo").await.expect("room");
    let grant = format!("room:{room}");
    let (id, secret, bot_user) = create(&sys, "Echo bot", &["rooms:join", "rooms:post", &grant]);
    let bin = chat_e2e::deploy::bin_dir().join("echo-bot");
    let mut child = Command::new(&bin)
        .env("CHAT_URL", sys.http_url())
        .env("CHAT_CLIENT_ID", &id)
        .env("CHAT_CLIENT_SECRET", &secret)
        .env("CHAT_ROOMS", &room)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "spawn {}: {e} (cargo build --workspace --bins)",
                bin.display()
            )
        });
    // Once the bot has joined, alice's message gets its answer.
    let joined = alice
        .recv_where(|v| v["kind"] == "member" && v["user"] == bot_user.as_str())
        .await;
    let answer = match joined {
        Ok(_) => {
            chat_e2e::send(&mut alice, &room, "q1", "hello bot")
                .await
                .expect("send");
            alice
                .recv_where(|v| v["kind"] == "msg" && v["from"] == bot_user.as_str())
                .await
        }
        Err(e) => Err(e),
    };
    let _killed = child.kill();
    let _reaped = child.wait();
    let answer = answer.expect("the bot answered");
    assert_eq!(answer["text"], "echo: hello bot");
    assert_ne!(login.user_id, bot_user);
}

/// A NATS client authenticated by `token` (the auth callout decides);
/// server errors (permission violations) arrive on the channel.
async fn nats_with_token(
    url: &str,
    token: &str,
) -> Result<
    (
        async_nats::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ),
    async_nats::ConnectError,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let c = async_nats::ConnectOptions::with_token(token.to_string())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _sent = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((c, rx))
}

async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let wait = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(e) = errors.recv().await {
            if e.contains(subject) {
                return;
            }
        }
    })
    .await;
    assert!(wait.is_ok(), "no permission violation for {subject}");
}

#[tokio::test]
async fn a_service_account_reads_its_granted_rooms_over_nats_and_nothing_else() {
    use futures::StreamExt as _;
    let sys = System::start().await.expect("system");
    let url = sys.nats.as_ref().expect("own nats").url();
    let (mut alice, alice_login) = sys.client("alice").await.expect("alice");
    let a = create_room(&mut alice, "a").await.expect("room a");
    let b = create_room(&mut alice, "b").await.expect("room b");
    let grant = format!("room:{a}");
    let (id, secret, _) = create(&sys, "Reader", &["rooms:read", "rooms:post", &grant]);
    let (_, body) = token(&sys, &id, &secret).await;
    let access = body["access_token"].as_str().expect("token").to_string();

    let (bot, mut errors) = nats_with_token(&url, &access)
        .await
        .expect("the callout admits it");
    let mut events = bot
        .subscribe(format!("chat.room.{a}.>"))
        .await
        .expect("sub");
    // PING/PONG: the server has the subscription (the bot may publish
    // nothing, so no request round trip).
    bot.flush().await.expect("flush");
    chat_e2e::send(&mut alice, &a, "n1", "over nats")
        .await
        .expect("send");
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("an event in time")
        .expect("event");
    let ev: Value = serde_json::from_slice(&ev.payload).expect("json");
    assert_eq!(ev["text"], "over nats");

    // Another room, any publish: refused by the server.
    let _other = bot
        .subscribe(format!("chat.room.{b}.>"))
        .await
        .expect("queued");
    violation(&mut errors, &format!("chat.room.{b}.>")).await;
    // Large rooms' room-wide deliveries are for gateways only.
    let _room_wide = bot.subscribe("rooms.deliver").await.expect("queued");
    violation(&mut errors, "rooms.deliver").await;
    for subject in [
        format!("chat.room.{a}.msg"),
        format!("chat.room.{b}.msg"),
        "gw.g1.deliver".to_string(),
        "rooms.deliver".to_string(),
    ] {
        bot.publish(subject.clone(), "x".into())
            .await
            .expect("queued");
        bot.flush().await.expect("flush");
        violation(&mut errors, &subject).await;
    }

    // Who does not get in: a person, a forged token, no token, an account
    // without a readable room.
    let (no_read, no_read_secret, _) = create(&sys, "Poster", &["rooms:post", &grant]);
    let (_, body) = token(&sys, &no_read, &no_read_secret).await;
    let poster = body["access_token"].as_str().expect("token").to_string();
    for (what, t) in [
        ("a person's token", alice_login.token.as_str()),
        ("garbage", "not-a-token"),
        ("a token without rooms:read", poster.as_str()),
    ] {
        assert!(
            nats_with_token(&url, t).await.is_err(),
            "{what} got into NATS"
        );
    }
    assert!(
        async_nats::connect(&url).await.is_err(),
        "no token got into NATS"
    );
}
