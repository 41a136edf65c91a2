//! `show clients` as text: one row per client (an IPv4 address or an IPv6 /64), busiest
//! first, then the limits in force.

use crate::table::Table;
use mta_ipc::clients::ClientReport;
use mta_types::message::age_label as age;

pub fn text(r: &ClientReport) -> String {
    const COLS: &str = "{:<26} {:>4} {:>9} {:>9} {:>10} {:>8}  {}";
    let mut t = Table::new(
        COLS,
        "Client|Open|Sessions|Messages|Recipients|Refused|Last seen",
    );
    for c in &r.rows {
        let seen = format!("{} ago", age(Some(c.last_seen_ms)));
        t.row(&[
            &c.client,
            &c.open,
            &c.connections,
            &c.messages,
            &c.recipients,
            &c.refused,
            &seen,
        ]);
    }
    let mut out = t.out;
    if r.rows.is_empty() {
        out.push_str("No untrusted client seen lately (trusted_networks are not counted).\n");
    }
    let listed = r.rows.len() as u64;
    if r.tracked > listed {
        out.push_str(&format!(
            "… and {} more clients counted\n",
            r.tracked - listed
        ));
    }
    let limits: Vec<String> = r.limits.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&match limits.is_empty() {
        true => "Limits: none".to_string(),
        false => format!("Limits: {}", limits.join(", ")),
    });
    out
}
