//! The names of every statistic (`show stat mail`, `/metrics`, the status page), in one
//! place. Domino's names where Domino has one (003's statistics list); `Mail.Received` and
//! `Mail.Deferred` are ours.
//!
//! Cumulative counters are kept by the store (`mta_store::stats`), in the same atomic batch
//! as the change that caused them; tasks add only what the store cannot see (sessions).
//! Live values are computed when asked, from the queue indexes.

/// Messages accepted over SMTP (a record created that is not a delivery report).
pub const RECEIVED: &str = "Mail.Received";
/// Delivery attempts that ended in a temporary failure, one per recipient and attempt.
pub const DEFERRED: &str = "Mail.Deferred";
pub const DELIVERED: &str = "Mail.Delivered";
pub const TRANSFERRED: &str = "Mail.Transferred";
pub const TOTAL_FAILURES: &str = "Mail.TotalFailures";
pub const TOTAL_ROUTED: &str = "Mail.TotalRouted";
pub const CONVERSION_ERRORS: &str = "Mail.ConversionErrors";
pub const TOTAL_DEAD: &str = "Mail.TotalDead";
pub const REPORTS_SENT: &str = "Mail.DeliveryReportsSent";
/// Added by isesctl per accepted session.
pub const INBOUND_SESSIONS: &str = "Mail.Inbound.Sessions";
/// Added by osesctl per session opened.
pub const OUTBOUND_SESSIONS: &str = "Mail.Outbound.Sessions";
/// Sum of (delivered or relayed − received) in ms, and how many: the average delivery time.
pub const DELIVER_TIME_SUM_MS: &str = "Mail.DeliverTime.SumMs";
pub const DELIVER_TIME_COUNT: &str = "Mail.DeliverTime.Count";
/// Sum of the sizes of delivered or relayed copies: the average size delivered.
pub const SIZE_DELIVERED_SUM: &str = "Mail.SizeDelivered.Sum";
/// Bytes of the copies delivered locally, and of those relayed: the byte rates.
pub const BYTES_DELIVERED: &str = "Mail.Bytes.Delivered";
pub const BYTES_TRANSFERRED: &str = "Mail.Bytes.Transferred";

/// Added by omsgcnv per message signed with a `[[dkim]]` key.
pub const DKIM_SIGNED: &str = "Mail.DKIM.Signed";
/// Added by isesctl per checked inbound message with a DKIM signature that verified.
pub const DKIM_VERIFIED_PASS: &str = "Mail.DKIM.Verified.Pass";
/// … with DKIM signatures of which none verified (or a malformed one).
pub const DKIM_VERIFIED_FAIL: &str = "Mail.DKIM.Verified.Fail";
/// … without a DKIM signature.
pub const DKIM_VERIFIED_NONE: &str = "Mail.DKIM.Verified.None";
/// Added by isesctl per message refused for DMARC `p=reject` (`[inbound] dmarc_reject`).
pub const DMARC_REJECTED: &str = "Mail.DMARC.Rejected";
/// The mail authentication counters, in the order `show stat mail` lists them.
pub const MAIL_AUTH: &[&str] = &[
    DKIM_SIGNED,
    DKIM_VERIFIED_PASS,
    DKIM_VERIFIED_FAIL,
    DKIM_VERIFIED_NONE,
    DMARC_REJECTED,
];

/// Added by isesctl per client blocked by the DNS lists (`[inbound] dnsbl`).
pub const INBOUND_DNSBL_BLOCKED: &str = "Mail.Inbound.DNSBL.Blocked";
/// … per DNS list query that failed (timeout, SERVFAIL): the client was taken as not listed.
pub const INBOUND_DNSBL_ERRORS: &str = "Mail.Inbound.DNSBL.Errors";
/// … per session, message or recipient refused for a per-client limit (`421 4.7.0`).
pub const INBOUND_LIMIT_REFUSED: &str = "Mail.Inbound.ClientLimit.Refused";
/// … per client dropped for talking before the banner (`greet_pause`).
pub const INBOUND_PREGREET: &str = "Mail.Inbound.Pregreet";
/// … per client dropped for pipelining where it was not offered.
pub const INBOUND_PIPELINING_REFUSED: &str = "Mail.Inbound.Pipelining.Refused";
/// The door's counters (isesctl before and around the banner), in `show stat mail` order.
pub const DOOR: &[&str] = &[
    INBOUND_DNSBL_BLOCKED,
    INBOUND_DNSBL_ERRORS,
    INBOUND_LIMIT_REFUSED,
    INBOUND_PREGREET,
    INBOUND_PIPELINING_REFUSED,
];

/// Added by the router per connection opened to an LMTP server (`[lmtp]`).
pub const LMTP_CONNECTIONS: &str = "Mail.LMTP.Connections";
/// … per transaction deferred because its LMTP server failed (unreachable, timed out,
/// lost the connection); its recipients are retried on the schedule.
pub const LMTP_FAILURES: &str = "Mail.LMTP.Failures";
/// The LMTP counters, in `show stat mail` order.
pub const LMTP: &[&str] = &[LMTP_CONNECTIONS, LMTP_FAILURES];

/// Upper bounds (ms) of the time-to-delivery histogram's buckets: arrival to delivered or
/// relayed, per recipient. From a local delivery (well under a second) to a day of retries.
pub const DELIVER_TIME_BOUNDS_MS: &[u64] = &[
    10, 50, 100, 250, 500, 1_000, 5_000, 30_000, 60_000, 300_000, 1_800_000, 3_600_000, 14_400_000,
    86_400_000,
];

/// The counter of the time-to-delivery bucket that holds `ms` (not cumulative: one bucket
/// per delivery; the last, `…Inf`, holds what took longer than every bound).
pub fn deliver_time_bucket(ms: u64) -> String {
    bucket_name(DELIVER_TIME_BOUNDS_MS.iter().copied().find(|b| ms <= *b))
}

/// Every time-to-delivery bucket counter, in the order of `DELIVER_TIME_BOUNDS_MS`, then
/// the last (`…Inf`).
pub fn deliver_time_buckets() -> Vec<String> {
    let bounds = DELIVER_TIME_BOUNDS_MS.iter().map(|b| Some(*b));
    bounds.chain([None]).map(bucket_name).collect()
}

fn bucket_name(bound: Option<u64>) -> String {
    match bound {
        Some(ms) => format!("Mail.DeliverTime.Bucket.{ms}"),
        None => "Mail.DeliverTime.Bucket.Inf".to_string(),
    }
}

// Live values (computed when asked).
pub const WAITING: &str = "Mail.Waiting";
pub const WAITING_FOR_DELIVERY_THREADS: &str = "Mail.WaitingForDeliveryThreads";
pub const DEAD: &str = "Mail.Dead";
pub const HOLD: &str = "Mail.Hold";
pub const AVERAGE_DELIVER_TIME: &str = "Mail.AverageDeliverTime";
pub const AVERAGE_SIZE_DELIVERED: &str = "Mail.AverageSizeDelivered";
pub const SPOOL_SIZE: &str = "Mail.Spool.Size";
pub const STORE_SIZE: &str = "Mail.Store.Size";
// Live values from 003's list (figure 12), computed by the supervisor.
pub const TOTAL_PENDING: &str = "Mail.TotalPending";
pub const WAITING_RECIPIENTS: &str = "Mail.WaitingRecipients";
pub const WAITING_FOR_DNS: &str = "Mail.WaitingForDNS";
pub const WAITING_FOR_DIR: &str = "Mail.WaitingForDIR";
pub const CURRENT_MESSAGE_DELIVERY_RATE: &str = "Mail.CurrentMessageDeliveryRate";
pub const CURRENT_MESSAGE_TRANSFER_RATE: &str = "Mail.CurrentMessageTransferRate";
pub const CURRENT_BYTE_DELIVERY_RATE: &str = "Mail.CurrentByteDeliveryRate";
pub const CURRENT_BYTE_TRANSFER_RATE: &str = "Mail.CurrentByteTransferRate";
pub const TRANSFER_THREADS_TOTAL: &str = "Mail.TransferThreads.Total";
pub const TRANSFER_THREADS_MAX: &str = "Mail.TransferThreads.Max";
pub const TRANSFER_THREADS_CONCURRENT_MAX: &str = "Mail.TransferThreads.Concurrent.Max";
pub const TRANSFER_THREADS_CONCURRENT_HIGHEST: &str = "Mail.TransferThreads.Concurrent.Highest";
pub const DELIVERY_THREADS_TOTAL: &str = "Mail.DeliveryThreads.Total";
pub const DELIVERY_THREADS_MAX: &str = "Mail.DeliveryThreads.Max";
pub const DOMAIN: &str = "Mail.Domain";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_time_falls_in_the_first_bucket_that_holds_it() {
        assert_eq!(deliver_time_bucket(0), "Mail.DeliverTime.Bucket.10");
        assert_eq!(deliver_time_bucket(10), "Mail.DeliverTime.Bucket.10");
        assert_eq!(deliver_time_bucket(11), "Mail.DeliverTime.Bucket.50");
        assert_eq!(
            deliver_time_bucket(86_400_001),
            "Mail.DeliverTime.Bucket.Inf"
        );
    }
}
