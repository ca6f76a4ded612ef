//! Two gateways behind a real load balancer (nginx, HAProxy): users land on
//! different gateways and chat; one gateway is SIGKILLed mid-run and its
//! clients reconnect through the load balancer to the other, resuming.
//! The same checks as every fault scenario (see docs/reliability.md).

use std::time::Duration;

use chat_e2e::deploy::Deployment;
use chat_e2e::lb::{Kind, LoadBalancer};
use chat_e2e::load::{self, Run};
use chat_testkit::NatsServer;

const LOAD_OPTIONS: [(&str, &str); 2] = [
    ("CHAT_GATEWAY_RATE_PER_SEC", "10000"),
    ("CHAT_GATEWAY_RATE_BURST", "10000"),
];

async fn one_gateway_killed_behind(kind: Kind, scenario: &str) {
    let nats = NatsServer::start().await.expect("nats");
    let mut d = Deployment::start(&nats.url(), 2, &LOAD_OPTIONS)
        .await
        .expect("two instances of every service");
    let backends: Vec<_> = d.gateways.iter().map(|g| g.addr).collect();
    let lb = LoadBalancer::start(kind, &backends)
        .await
        .expect("load balancer");
    let plan = load::prepare(&lb.http_url(), &lb.ws_url())
        .await
        .expect("rooms, through the load balancer");
    let run = Run::start(
        plan,
        vec![lb.ws_url()],
        load::per_sender(),
        Duration::from_secs(180) + Duration::from_millis(50) * load::per_sender() as u32,
    );

    // The load balancer spread the clients: both gateways got some. (A
    // counter, not the connections gauge: a short load may be over on one
    // gateway before the other is asked.)
    for g in &d.gateways {
        chat_testkit::eventually(
            Duration::from_secs(20),
            &format!("{} got clients", g.name),
            || async {
                let n = g.metric("chat_gateway_frames_in_total").await.ok()?;
                (n >= 1.0).then_some(())
            },
        )
        .await;
    }

    run.until_stored(1.0 / 3.0).await;
    d.gateways[0].kill();

    if let Err(e) = run.finish(scenario).await {
        let mut logs = String::new();
        for p in d.gateways.iter().chain(&d.fanouts) {
            let m = reqwest_metrics(p).await;
            logs.push_str(&format!(
                "--- {} metrics:\n{m}\n--- {} log:\n{}\n",
                p.name,
                p.name,
                p.log_tail()
            ));
        }
        panic!("{e:#}\n{:?} log:\n{}\n{logs}", lb.kind, lb.log());
    }
}

#[tokio::test]
async fn behind_nginx_one_gateway_killed_loses_nothing() {
    one_gateway_killed_behind(Kind::Nginx, "two gateways behind nginx, one SIGKILLed").await;
}

#[tokio::test]
async fn behind_haproxy_one_gateway_killed_loses_nothing() {
    one_gateway_killed_behind(Kind::Haproxy, "two gateways behind HAProxy, one SIGKILLed").await;
}

/// The chat_* lines of a service's `/metrics` (for failure messages).
async fn reqwest_metrics(p: &chat_e2e::deploy::ServiceProcess) -> String {
    let Ok(r) = reqwest::get(format!("http://{}/metrics", p.admin)).await else {
        return "(no metrics)".into();
    };
    r.text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("chat_"))
        .collect::<Vec<_>>()
        .join("\n")
}
