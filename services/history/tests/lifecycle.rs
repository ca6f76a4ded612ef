//! Health, readiness and shutdown of the history service.

mod common;

use std::time::Duration;

use chat_testkit::within;
use common::Harness;

#[tokio::test]
async fn it_serves_health_and_metrics_and_reports_ready_once_set_up() {
    let h = Harness::start().await;
    let app = h.spawn().await; // waits for /readyz 200
    let health = reqwest::get(format!("http://{}/healthz", app.addr))
        .await
        .expect("healthz");
    assert!(health.status().is_success());
    let metrics = reqwest::get(format!("http://{}/metrics", app.addr))
        .await
        .expect("metrics");
    assert!(metrics.status().is_success());
    assert!(
        h.db().exists(),
        "the database file and its directory were created"
    );
    app.stop().await;
}

#[tokio::test]
async fn cancelling_the_token_makes_run_return_promptly_and_stop_answering() {
    let h = Harness::start().await;
    let app = h.spawn().await;
    let addr = app.addr;
    app.shutdown.cancel();
    within(
        Duration::from_secs(5),
        "run to return after cancel",
        app.handle,
    )
    .await
    .expect("no panic")
    .expect("run returned Ok");
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the ops listener is closed after shutdown"
    );
    // Nobody answers history requests any more.
    let r = h
        .client
        .request(chat_core::names::svc::HISTORY_ROOM_GET, "{}".into())
        .await;
    assert!(r.is_err(), "no responder after shutdown");
}

#[tokio::test]
async fn run_fails_with_a_clear_error_when_the_database_cannot_be_opened() {
    let h = Harness::start().await;
    // A directory where the file should be.
    std::fs::create_dir_all(h.db()).expect("mkdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = within(
        Duration::from_secs(10),
        "run to fail",
        chat_history::run(h.config(), listener, chat_platform::Shutdown::new()),
    )
    .await
    .expect_err("a directory is not a database");
    assert!(format!("{err:#}").contains("CHAT_HISTORY_DB"), "{err:#}");
}
