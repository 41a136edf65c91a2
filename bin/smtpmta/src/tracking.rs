//! Message tracking, the supervisor's side: `track` pages, and the pruning of histories
//! older than `tracking_days`.

use crate::Supervisor;
use mta_ipc::console::ConsoleReply;
use mta_ipc::tracking::{TrackPage, TrackQuery, PAGE_ROWS};
use mta_types::message::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// How often histories are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most chunks (`mta_store::tracking::PRUNE_CHUNK` histories each) one pass removes: at
/// 2000 × 5 a minute a pass keeps up with 14 million messages a day, and its cost is
/// bounded whatever the backlog of expired entries.
const PRUNE_CHUNKS_PER_PASS: usize = 5;

pub async fn prune_schedule(sup: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let sup = sup.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let mut total = 0;
            for _ in 0..PRUNE_CHUNKS_PER_PASS {
                match sup.store.engine().prune_history(now_ms()) {
                    Ok(n) => {
                        total += n;
                        if n < mta_store::tracking::PRUNE_CHUNK {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("message tracking: prune failed: {e}");
                        break;
                    }
                }
            }
            total
        })
        .await
        .unwrap_or(0);
        if pruned > 0 {
            tracing::info!("message tracking: {pruned} histories past tracking_days removed");
        }
    }
}

/// One page of `track`.
pub fn track(sup: &Supervisor, q: &TrackQuery) -> ConsoleReply {
    match sup.store.engine().track(q, PAGE_ROWS) {
        Ok((rows, next)) => ConsoleReply::Track(TrackPage { rows, next }),
        Err(e) => ConsoleReply::Error(format!("queue store: {e}")),
    }
}
