//! Joining the fleet (`[cluster] redis`): every process that shares limits or status
//! (osesctl, isesctl, the supervisor) opens its own link to Redis here.
//!
//! The first connection is tried once before the task serves (bounded by four
//! `[cluster] timeout`s), so limits are shared from the first session; if Redis does not
//! answer, the task starts anyway on local shares and `Fleet::maintain` (spawned here)
//! keeps trying. The local share divides by the nodes last seen alive, which the
//! supervisor keeps in `<data_dir>/cluster/alive` so a node that restarts while Redis is
//! away still knows how many it shares with.

use mta_config::Config;
use mta_limit::fleet::{Fleet, FleetSettings};
use mta_limit::{FleetLimiter, Limiter, MemoryLimiter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `<data_dir>/cluster/alive`: the nodes last seen alive, one number.
pub fn alive_file(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster").join("alive")
}

/// The fleet link of this process, connected if Redis answers now; `None` for a single
/// node (no `[cluster] redis`).
pub async fn join(config: &Config) -> anyhow::Result<Option<Arc<Fleet>>> {
    let cluster = &config.cluster;
    let Some(redis) = &cluster.redis else {
        return Ok(None);
    };
    let fleet = Fleet::new(FleetSettings {
        url: redis.as_secret_str().to_string(),
        shown_url: redis.to_string(),
        node: cluster.node.clone(),
        timeout: cluster.timeout,
        heartbeat: cluster.heartbeat,
        lease_ttl: cluster.lease_ttl,
    })?;
    if let Some(n) = std::fs::read_to_string(alive_file(&config.data_dir))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        fleet.assume_alive(n);
    }
    fleet.connect().await;
    tokio::spawn(fleet.clone().maintain());
    Ok(Some(fleet))
}

/// The limiter for shared limits: the fleet's when `[cluster] redis` is set, else this
/// process's memory.
pub async fn limiter(config: &Config) -> anyhow::Result<(Arc<dyn Limiter>, Option<Arc<Fleet>>)> {
    Ok(match join(config).await? {
        Some(fleet) => (Arc::new(FleetLimiter::new(fleet.clone())), Some(fleet)),
        None => (Arc::new(MemoryLimiter::new()), None),
    })
}
