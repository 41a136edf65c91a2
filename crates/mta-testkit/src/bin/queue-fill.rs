//! queue-fill — a test and benchmark tool: fills a running suite's Outbound Work Queue
//! with N deferred messages, as if their destination had been down for a while, fast.
//!
//! Each message is real: its own content (1 KiB, own Message-ID) appended to a spool
//! segment and fdatasync'ed before the records are committed, and a record committed
//! through the store's API (`StoreClient`, the same path every task uses), in batches of
//! 1,000 per commit. The records are what osesctl writes after a refused connection:
//! pending recipient with a next retry time, one attempt, a last error.
//!
//! Usage: queue-fill --config etc/smtpmta.toml --count 50000 --to user@backlog.test
//!        [--deferred-secs 3600]

use anyhow::Context as _;
use clap::Parser;
use mta_ipc::store::Change;
use mta_ipc::StoreClient;
use mta_types::message::{
    now_ms, Attempt, ContentRef, Envelope, Location, MessageRecord, Recipient, RECORD_SCHEMA,
};
use mta_types::{QueueId, QueueName, TaskName};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    count: u64,
    /// The one recipient of every message (its domain is the destination that is down).
    #[arg(long)]
    to: String,
    /// How long until their next retry.
    #[arg(long, default_value_t = 3600)]
    deferred_secs: u64,
}

const BATCH: u64 = 1000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = mta_config::Config::load(&args.config)?;
    let to: mta_types::Address = args
        .to
        .parse()
        .map_err(|e| anyhow::anyhow!("--to {}: {e}", args.to))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = StoreClient::new(&config.run_dir(), TaskName::Mtacon);
    let mut spool = mta_spool::SpoolWriter::open(&config.spool_dir(), "queuefill")?;
    let started = Instant::now();
    let mut done = 0u64;
    let filler = "x".repeat(900);
    while done < args.count {
        let n = BATCH.min(args.count - done);
        let now = now_ms();
        let retry_at = now + args.deferred_secs * 1000;
        let mut changes = Vec::with_capacity(n as usize);
        for i in 0..n {
            let id = QueueId::generate();
            let content = format!(
                "Received: from fill.test by {host}; queue-fill\r\nFrom: <fill@fill.test>\r\nTo: <{to}>\r\nSubject: backlog {k}\r\nMessage-ID: <{id}.{k}@fill.test>\r\n\r\n{filler}\r\n",
                host = config.hostname,
                k = done + i,
            );
            let content_ref: ContentRef = spool.append(&[content.as_bytes()])?;
            let mut rcpt = Recipient::new(to.clone());
            rcpt.attempts.push(Attempt {
                at: now,
                host: to.domain().to_string(),
                outcome: mta_types::DeliveryOutcome::Deferred {
                    reply: mta_types::outcome::Reply::local((4, 4, 1), "connection refused"),
                    next: retry_at,
                },
            });
            rcpt.next_retry = Some(retry_at);
            changes.push(Change::Put(MessageRecord {
                schema: RECORD_SCHEMA,
                id,
                location: Location::Queue(QueueName::OutboundWork),
                received_at: now,
                size: content.len() as u64,
                envelope: Envelope::new(
                    Some("fill@fill.test".parse().expect("address")),
                    "fill.test",
                    "127.0.0.1",
                    "ESMTP",
                ),
                recipients: vec![rcpt],
                content: content_ref,
                fields: None,
                trace: Default::default(),
                not_before: retry_at,
                note: Some(format!("4.4.1 {}: connection refused", to.domain())),
            }));
        }
        // Content durable before the records that point to it.
        spool.sync()?;
        runtime
            .block_on(store.commit(changes))
            .with_context(|| format!("commit after {done} messages"))?;
        done += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"filled\": {done}, \"seconds\": {secs:.2}, \"per_second\": {:.0}}}",
        done as f64 / secs
    );
    Ok(())
}
