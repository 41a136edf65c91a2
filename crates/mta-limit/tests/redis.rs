//! FleetLimiter against a real Redis (Debian's redis-server, started here on a free
//! loopback port): leases and rates are shared by two "nodes", a dead holder's leases
//! lapse by their TTL, and with Redis gone each node counts its local share at once.

use mta_limit::fleet::{Fleet, FleetSettings, Link};
use mta_limit::{FleetLimiter, Limiter, Rate, Verdict};
use mta_testkit::redis::Redis;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node(redis: &Redis, name: &str) -> Arc<Fleet> {
    Fleet::new(FleetSettings {
        url: redis.url(),
        shown_url: redis.url(),
        node: name.into(),
        timeout: Duration::from_millis(250),
        heartbeat: Duration::from_secs(1),
        lease_ttl: Duration::from_secs(2),
    })
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn leases_and_rates_are_shared_and_fall_back_to_local_shares() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    assert!(a.connect().await && b.connect().await);
    assert!(a.heartbeat("{}".into()).await && b.heartbeat("{}".into()).await);
    tokio::spawn(a.clone().maintain());
    tokio::spawn(b.clone().maintain());
    let (la, lb) = (FleetLimiter::new(a.clone()), FleetLimiter::new(b.clone()));

    // Two slots for the fleet: one each, then neither gets a third.
    let first = la.lease("site", 2).await.expect("a's");
    let second = lb.lease("site", 2).await.expect("b's");
    assert!(la.lease("site", 2).await.is_none());
    assert!(lb.lease("site", 2).await.is_none());
    // `local:` keys are per node, in full.
    assert!(la.lease("local:site", 1).await.is_some());
    // A holder that dies without giving back (a node whose renewals stop): its lease
    // lapses within the TTL.
    drop((first, second));
    let dead = node(&redis, "dead");
    assert!(dead.connect().await);
    let held = FleetLimiter::new(dead)
        .lease("site", 2)
        .await
        .expect("dead's");
    std::mem::forget(held);
    let _a_again = la.lease("site", 2).await.expect("a's");
    assert!(lb.lease("site", 2).await.is_none());
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(5) {
        if let Some(l) = lb.lease("site", 2).await {
            got.push(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got.len(),
        1,
        "b reaches the full limit once the dead one's lease expired"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // A rate of 10/min: burst 1, then one per 6 s, across both nodes.
    let rate: Rate = "10/min".parse().unwrap();
    assert_eq!(la.check("msg", rate).await, Verdict::Allowed);
    assert!(matches!(
        lb.check("msg", rate).await,
        Verdict::RetryAfter(_)
    ));
    let rounds = a.round_trips();

    assert_eq!(a.alive_nodes(), 2, "two heartbeats seen");
    // Redis gone: the first call fails within the timeout, then local shares, no calls.
    redis.kill9();
    let t = Instant::now();
    let _ = la.check("other", rate).await;
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(a.link(), Link::Down);
    let one = la
        .lease("site2", 4)
        .await
        .expect("local share of 4 ÷ 2 nodes");
    let two = la.lease("site2", 4).await.expect("the share's second");
    assert!(
        la.lease("site2", 4).await.is_none(),
        "share is 2 (2 nodes alive)"
    );
    assert!(a.round_trips() <= rounds + 3);
    drop((one, two));

    // Back: the maintain loop reconnects and limits are shared again.
    redis.restart();
    let start = Instant::now();
    while !a.is_up() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.is_up(), "reconnected");
    let _three = la.lease("site3", 1).await.expect("shared lease");
    while !b.is_up() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lb.lease("site3", 1).await.is_none(), "shared again");
}

#[tokio::test(flavor = "current_thread")]
async fn admit_counts_several_limits_in_one_call_all_or_nothing() {
    use mta_limit::fleet::{Admission, RateCheck};
    let redis = Redis::start();
    let (a, b) = (node(&redis, "a"), node(&redis, "b"));
    assert!(a.connect().await && b.connect().await);
    let rate: Rate = "3/h".parse().unwrap();
    let checks = |key: &str| {
        vec![RateCheck {
            key: key.into(),
            rate,
            burst: rate.count,
        }]
    };
    // A new key spends its whole burst at once, shared by both nodes.
    for node in [&a, &b, &a] {
        let got = node.admit(&checks("c"), Some(("c", 2))).await.unwrap();
        let Admission::Allowed { lease: Some(id) } = got else {
            panic!("{got:?}")
        };
        node.release_lease(id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match b.admit(&checks("c"), None).await.unwrap() {
        Admission::Refused { index: 0, wait } => {
            assert!(wait > Duration::from_secs(1000), "{wait:?}")
        }
        other => panic!("{other:?}"),
    }
    // The lease refuses: the rate of another key is not counted.
    let other = checks("d");
    assert!(matches!(
        a.admit(&[], Some(("full", 1))).await,
        Some(Admission::Allowed { lease: Some(_) })
    ));
    assert_eq!(
        b.admit(&other, Some(("full", 1))).await,
        Some(Admission::Refused {
            index: 1,
            wait: Duration::ZERO
        })
    );
    for _ in 0..3 {
        assert!(matches!(
            b.admit(&other, None).await,
            Some(Admission::Allowed { lease: None })
        ));
    }
    // One round trip each: 3 admitted and their 3 releases, then 1 + 1 + 1 + 3.
    assert_eq!(a.limit_round_trips() + b.limit_round_trips(), 3 + 3 + 6);
}
