//! One claimed batch of `reports`: decide who each message's report lists, render it
//! (`mta_convert::render_dsn`), append it to the spool, and return the store changes.

use mta_config::Config;
use mta_convert::{render_dsn, Dsn, DsnInput, ReportLine};
use mta_ipc::store::Change;
use mta_spool::{SpoolError, SpoolWriter};
use mta_types::message::{
    now_ms, Envelope, HopTrace, Origin, ParsedFields, ReportAction, UnixMillis, RECORD_SCHEMA,
};
use mta_types::{
    Address, ContentRef, Location, MessageRecord, QueueId, QueueName, RcptStatus, Recipient,
    TaskName,
};
use std::time::{Duration, UNIX_EPOCH};

pub struct Batch {
    pub changes: Vec<Change>,
    pub reports: usize,
    /// Originals sent back to the outbound queue after a delay report.
    pub to_outbound: usize,
    /// Log lines, written once the commit succeeded.
    pub log: Vec<String>,
}

fn date(ms: UnixMillis) -> String {
    mta_smtp::rfc5322_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Which recipients of `record` this report lists, and how (indexes into `recipients`).
pub fn report_lines(
    record: &MessageRecord,
    now: UnixMillis,
    delay_warning: Duration,
) -> Vec<(usize, ReportAction)> {
    if record.envelope.mail_from.is_none() {
        return Vec::new(); // a report is never reported on
    }
    let delayed = now.saturating_sub(record.received_at) >= delay_warning.as_millis() as u64;
    record
        .recipients
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.final_report() {
            Some(action) => Some((i, action)),
            None if delayed
                && r.status == RcptStatus::Pending
                && !r.delay_reported
                && r.notify_delay() =>
            {
                Some((i, ReportAction::Delayed))
            }
            None => None,
        })
        .collect()
}

pub fn report_batch(
    records: Vec<MessageRecord>,
    config: &Config,
    spool: &mut SpoolWriter,
) -> Result<Batch, SpoolError> {
    let mut batch = Batch {
        changes: Vec::new(),
        reports: 0,
        to_outbound: 0,
        log: Vec::new(),
    };
    let spool_dir = config.spool_dir();
    let mut pending_reports = Vec::new();
    for mut record in records {
        let now = now_ms();
        let lines = report_lines(&record, now, config.outbound.delay_warning);
        if let (false, Some(sender)) = (lines.is_empty(), record.envelope.mail_from.clone()) {
            let content = mta_spool::read(&spool_dir, &record.content);
            if let Err(e) = &content {
                tracing::warn!(
                    "qid={} cannot read the content for the report: {e}",
                    record.id
                );
            }
            let dsn_id = QueueId::generate();
            let unique = format!("{dsn_id}.{}", record.id);
            let dsn = render_dsn(&DsnInput {
                hostname: &config.hostname,
                original: &record,
                lines: lines
                    .iter()
                    .map(|&(i, action)| ReportLine {
                        recipient: &record.recipients[i],
                        action,
                    })
                    .collect(),
                content: content.as_deref().ok(),
                date: &date,
                now,
                unique: &unique,
                retry_until: Some(
                    record.received_at + config.outbound.queue_lifetime.as_millis() as u64,
                ),
            });
            let content_ref = spool.append(&[&dsn.content])?;
            let original = &record.envelope;
            let report = report_record(config, original, &sender, dsn_id, &dsn, content_ref, now);
            let actions: Vec<&str> = {
                let mut a: Vec<&str> = lines.iter().map(|(_, a)| a.as_str()).collect();
                a.dedup();
                a
            };
            batch.log.push(format!(
                "qid={} report={dsn_id} to=<{sender}> action={} nrcpt={}",
                record.id,
                actions.join(","),
                lines.len()
            ));
            for &(i, action) in &lines {
                let r = &mut record.recipients[i];
                if action == ReportAction::Delayed {
                    r.delay_reported = true;
                } else {
                    r.final_reported = true;
                }
            }
            pending_reports.push(report);
            batch.reports += 1;
        }
        record.trace.route.push((TaskName::Drt.to_string(), now));
        record.location = next_location(&record, config);
        match record.location {
            Location::Done => batch.log.push(format!("qid={} removed", record.id)),
            Location::Queue(QueueName::OutboundWork) => batch.to_outbound += 1,
            _ => {}
        }
        batch.changes.push(Change::Put(record));
    }
    if !pending_reports.is_empty() {
        // Content durable before the records that point to it.
        spool.sync()?;
    }
    batch
        .changes
        .extend(pending_reports.into_iter().map(Change::Put));
    Ok(batch)
}

/// The delivery report's own record: from `<>` to the original's sender, in mail.box
/// (local senders are delivered by the router, others go out through omsgcnv).
fn report_record(
    config: &Config,
    original: &Envelope,
    sender: &Address,
    dsn_id: QueueId,
    dsn: &Dsn,
    content: ContentRef,
    now: UnixMillis,
) -> MessageRecord {
    MessageRecord {
        schema: RECORD_SCHEMA,
        id: dsn_id,
        location: Location::Queue(QueueName::MailBox),
        received_at: now,
        size: dsn.content.len() as u64,
        envelope: Envelope {
            utf8: original.utf8,
            eight_bit: original.eight_bit,
            ..Envelope::new(None, config.hostname.clone(), "127.0.0.1", "local")
        },
        recipients: vec![Recipient::new(sender.clone())],
        content,
        fields: Some(ParsedFields {
            from: Some(format!("Mail Delivery System <{}>", dsn.from)),
            to: Some(format!("<{sender}>")),
            cc: None,
            subject: Some(dsn.subject.clone()),
            date: Some(date(now)),
            message_id: Some(dsn.message_id.clone()),
            authentication_results: None,
        }),
        trace: HopTrace {
            hop_count: 0,
            route: vec![(TaskName::Drt.to_string(), now)],
            origin: Origin::Report,
        },
        not_before: 0,
        note: None,
    }
}

/// Where the original goes after its report: done when every recipient is final, mail.box
/// while a local recipient waits, else back to the outbound queue.
fn next_location(record: &MessageRecord, config: &Config) -> Location {
    if record.all_final() {
        Location::Done
    } else if record
        .recipients
        .iter()
        .any(|r| r.status == RcptStatus::Pending && config.is_local_domain(r.address.domain()))
    {
        Location::Queue(QueueName::MailBox)
    } else {
        Location::Queue(QueueName::OutboundWork)
    }
}
