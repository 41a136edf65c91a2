//! The supervisor socket's request handler.

use crate::Supervisor;
use mta_ipc::hello::Hello;
use mta_ipc::server::Handler;
use mta_ipc::store::StoreResponse;
use mta_ipc::{SupervisorRequest, SupervisorResponse};
use std::sync::Arc;

#[derive(Clone)]
pub struct SupervisorService(pub Arc<Supervisor>);

impl Handler<SupervisorRequest, SupervisorResponse> for SupervisorService {
    async fn handle(&self, peer: &Hello, request: SupervisorRequest) -> SupervisorResponse {
        let sup = &self.0;
        match request {
            SupervisorRequest::Ready { task } => {
                if sup.children.pid_of(task) != Some(peer.pid) {
                    return SupervisorResponse::Error(format!(
                        "pid {} is not the {task} this supervisor started",
                        peer.pid
                    ));
                }
                sup.children.mark_ready(task, peer.pid);
                // A restarted task starts from the file's knobs: give it the ones in effect.
                let knobs = sup.knobs();
                if knobs != sup.config().debug {
                    let run_dir = sup.config().run_dir();
                    tokio::spawn(async move {
                        if let Err(e) = crate::tasks::push_knobs(&run_dir, task, &knobs).await {
                            tracing::warn!(%task, error = %e, "could not give the task the debug knobs in effect");
                        }
                    });
                }
                tracing::info!(%task, pid = peer.pid, "task ready");
                SupervisorResponse::Ack
            }
            SupervisorRequest::Store(request) => {
                SupervisorResponse::Store(sup.store.handle(peer.pid, request).await)
            }
            SupervisorRequest::Console(command) => {
                SupervisorResponse::Console(crate::console::execute(sup, command).await)
            }
        }
    }

    /// A claim answered after its task died (the supervisor may already have returned
    /// that task's leases when it saw the exit) would keep its records leased to a dead
    /// process until the lease runs out: return them to their queues now.
    async fn undelivered(&self, peer: &Hello, response: SupervisorResponse) {
        if let SupervisorResponse::Store(StoreResponse::Claimed(records)) = response {
            let ids: Vec<_> = records.iter().map(|r| r.id).collect();
            self.0.store.end_leases_of(peer.pid, &ids);
            tracing::info!(
                pid = peer.pid,
                returned = ids.len(),
                "claims answered after their task had gone returned to their queues"
            );
        }
    }
}
