//! The operator's hands on single messages: `show message`, `hold`, `release`,
//! `release dead`, `delete`. Each works on a record no task holds (`StoreService::operate`
//! leases it to the supervisor meanwhile); a record a task is working on is "busy".

use crate::Supervisor;
use mta_ipc::console::ConsoleReply;
use mta_ipc::store::{BulkOp, Change};
use mta_ipc::{TaskClient, TaskRequest};
use mta_store::OperateError;
use mta_types::{Location, QueueId, QueueName, RcptStatus, TaskName};

fn not_a_queue_id(qid: &str) -> ConsoleReply {
    ConsoleReply::Error(format!("`{qid}` is not a queue id (see `show queue`)"))
}

fn failed(qid: &str, e: OperateError) -> ConsoleReply {
    ConsoleReply::Error(match e {
        OperateError::NotFound => format!("{qid}: no such message in the queue"),
        OperateError::Busy => format!("{qid} is busy (a task is working on it), try again"),
        other => format!("{qid}: {other}"),
    })
}

/// Best effort: a lost kick delays the message by one poll interval.
async fn kick(sup: &Supervisor, queue: QueueName) {
    if let Ok(mut c) =
        TaskClient::connect(&sup.config().run_dir(), queue.consumer(), TaskName::Smtpmta).await
    {
        let _ = c.request(&TaskRequest::Kick { queue }).await;
    }
}

pub fn show_message(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    match sup.store.engine().get(id) {
        Ok(Some(record)) => ConsoleReply::Message(Box::new(record)),
        // No longer queued: its history, while tracking keeps it.
        Ok(None) => match sup.store.engine().history(id) {
            Ok(Some(entry)) => ConsoleReply::History(Box::new(entry)),
            Ok(None) => ConsoleReply::Error(format!(
                "{qid}: no such message in the queue or in the message tracking history (kept {} days)",
                sup.store.engine().tracking_days()
            )),
            Err(e) => ConsoleReply::Error(format!("queue store: {e}")),
        },
        Err(e) => ConsoleReply::Error(format!("queue store: {e}")),
    }
}

pub async fn hold(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    let result = sup
        .store
        .operate(id, |mut r| match r.location {
            Location::Queue(from) => {
                r.location = Location::Held { from };
                r.note = Some(format!("held by the operator (from {from})"));
                Ok(Change::Put(r))
            }
            other => Err(format!(
                "it is {}: only queued messages can be held",
                other.label()
            )),
        })
        .await;
    match result {
        Ok(()) => {
            tracing::info!("qid={id} held by the operator");
            ConsoleReply::Text(format!("{id} held"))
        }
        Err(e) => failed(qid, e),
    }
}

pub async fn release(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    let mut back_to = None;
    let mut retried = None;
    let result = sup
        .store
        .operate(id, |mut r| match r.location {
            _ if r.is_held_undeliverable() => {
                r.release_undeliverable();
                back_to = Some(QueueName::MailBox);
                retried = Some("delivery");
                Ok(Change::Put(r))
            }
            // The conversion is tried again (say after `SMTPSaveImportErrors` was raised
            // to see why, or once the spool is readable again).
            Location::ConversionError => {
                r.location = Location::Queue(QueueName::InboundWork);
                r.not_before = 0;
                r.note = None;
                back_to = Some(QueueName::InboundWork);
                retried = Some("conversion");
                Ok(Change::Put(r))
            }
            Location::Held { from } => {
                r.location = Location::Queue(from);
                r.not_before = 0;
                r.note = None;
                back_to = Some(from);
                Ok(Change::Put(r))
            }
            Location::Dead => Err("it is Dead: use `release dead <queue-id>`".into()),
            other => Err(format!("it is {}, not held", other.label())),
        })
        .await;
    match (result, back_to) {
        (Ok(()), Some(queue)) if retried.is_some() => {
            kick(sup, queue).await;
            let what = retried.unwrap_or_default();
            tracing::info!("qid={id} released by the operator: {what} retried");
            let result = outcome_after(sup, id, Location::Queue(queue)).await;
            ConsoleReply::Text(format!("{id} released: {what} retried; {result}"))
        }
        (Ok(()), Some(queue)) => {
            kick(sup, queue).await;
            tracing::info!("qid={id} released by the operator to {queue}");
            ConsoleReply::Text(format!("{id} released to {queue}"))
        }
        (Err(e), _) => failed(qid, e),
        (Ok(()), None) => ConsoleReply::Error("released nowhere".into()),
    }
}

/// Re-routes a dead message: failed recipients become pending again and the message goes
/// back to `mail.box` (an undeliverable report that fails again comes back to Dead).
pub async fn release_dead(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    let to = std::sync::Mutex::new(QueueName::MailBox);
    let result = sup
        .store
        .operate(id, |mut r| {
            if r.location != Location::Dead {
                return Err(format!("it is {}, not Dead", r.location.label()));
            }
            for rcpt in &mut r.recipients {
                if matches!(rcpt.status, RcptStatus::Failed { .. }) {
                    rcpt.status = RcptStatus::Pending;
                    rcpt.next_retry = None;
                    rcpt.final_reported = false;
                }
            }
            // A record rebuilt from the spool was never converted: imsgcnv first.
            let queue = if r.fields.is_none() {
                QueueName::InboundWork
            } else {
                QueueName::MailBox
            };
            r.location = Location::Queue(queue);
            r.not_before = 0;
            r.note = None;
            *to.lock().expect("release target") = queue;
            Ok(Change::Put(r))
        })
        .await;
    let queue = *to.lock().expect("release target");
    match result {
        Ok(()) => {
            kick(sup, queue).await;
            tracing::info!(
                "qid={id} dead message released by the operator to {}",
                queue.as_str()
            );
            ConsoleReply::Text(format!("{id} released to {} for routing", queue.as_str()))
        }
        Err(e) => failed(qid, e),
    }
}

/// Where a message the console just sent on stands once it has left `from` (or the
/// deadline passed): the result `release` and `bounce` show.
async fn outcome_after(sup: &Supervisor, id: QueueId, from: Location) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let record = sup.store.engine().get(id).ok().flatten();
        match record {
            None => {
                let how = sup
                    .store
                    .engine()
                    .history(id)
                    .ok()
                    .flatten()
                    .map(|h| {
                        h.recipients
                            .iter()
                            .map(|r| format!("{} {}", r.address, r.outcome))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                return format!("finished and removed from the queue ({how})");
            }
            Some(r)
                if !matches!(r.location, Location::Queue(_))
                    || (from == Location::Queue(QueueName::InboundWork) && r.location != from)
                    || std::time::Instant::now() >= deadline =>
            {
                let note = r.note.map(|n| format!(": {n}")).unwrap_or_default();
                let state = match r.location {
                    Location::Queue(q) => format!("now {} in {q}", r.location.label()),
                    Location::Held { .. } if note.is_empty() => "now Held".to_string(),
                    other => format!("now {}", other.label()),
                };
                return format!("{state}{note}");
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// `bounce <id>`: a message held as undeliverable goes to drt, which sends its failure
/// report now and removes it.
pub async fn bounce(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    let result = sup
        .store
        .operate(id, |mut r| {
            if !r.is_held_undeliverable() {
                return Err(format!(
                    "it is {}, not held as undeliverable (only those are bounced)",
                    r.location.label()
                ));
            }
            r.location = Location::Queue(QueueName::Reports);
            r.not_before = 0;
            r.note = None;
            Ok(Change::Put(r))
        })
        .await;
    match result {
        Ok(()) => {
            kick(sup, QueueName::Reports).await;
            tracing::info!("qid={id} bounced by the operator: failure report now");
            let result = outcome_after(sup, id, Location::Queue(QueueName::Reports)).await;
            ConsoleReply::Text(format!("{id} bounced: failure report sent; {result}"))
        }
        Err(e) => failed(qid, e),
    }
}

pub async fn delete(sup: &Supervisor, qid: &str) -> ConsoleReply {
    let Ok(id) = qid.parse::<QueueId>() else {
        return not_a_queue_id(qid);
    };
    match sup.store.operate(id, |r| Ok(Change::Remove(r.id))).await {
        Ok(()) => {
            tracing::info!("qid={id} deleted by the operator");
            ConsoleReply::Text(format!("{id} deleted"))
        }
        Err(e) => failed(qid, e),
    }
}

/// `hold domain`, `release domain`, `delete domain`: the store walks the destination in
/// bounded chunks.
pub async fn bulk(sup: &Supervisor, op: BulkOp, domain: &str) -> ConsoleReply {
    match sup.store.bulk(op, Some(domain)).await {
        Ok(r) => {
            let verb = match op {
                BulkOp::Hold => "held",
                BulkOp::Release => "released",
                BulkOp::Delete => "deleted",
                BulkOp::RouteNow | BulkOp::RouteLocalDelivery => "scheduled for delivery now",
            };
            tracing::info!(
                "{verb} by the operator: {} message(s) for {domain} ({} busy)",
                r.changed,
                r.busy
            );
            if op == BulkOp::Release {
                for q in QueueName::ALL {
                    kick(sup, q).await;
                }
            }
            let busy = if r.busy > 0 {
                format!("; {} busy (a task is working on them), try again", r.busy)
            } else {
                String::new()
            };
            ConsoleReply::Text(format!("{domain}: {} message(s) {verb}{busy}", r.changed))
        }
        Err(e) => ConsoleReply::Error(format!("queue store: {e}")),
    }
}

/// `route localdelivery`: local recipients waiting in mail.box for a retry (a mailbox that
/// could not be written) are tried now; the router's claims take them as due.
pub async fn route_local_delivery(sup: &Supervisor) -> ConsoleReply {
    match sup.store.bulk(BulkOp::RouteLocalDelivery, None).await {
        Ok(r) => {
            kick(sup, QueueName::MailBox).await;
            tracing::info!(
                "route LocalDelivery: {} message(s) in mail.box scheduled for delivery now",
                r.changed
            );
            ConsoleReply::Text(format!(
                "route LocalDelivery: {} message(s) in mail.box scheduled for delivery now",
                r.changed
            ))
        }
        Err(e) => ConsoleReply::Error(format!("queue store: {e}")),
    }
}
