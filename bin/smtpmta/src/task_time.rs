//! `show task time` (003's key command): every task's start time, uptime and CPU time,
//! read from `/proc/<pid>/stat` (fields 14 and 15, user and system time, and 22, the start
//! time, all in clock ticks; the start is counted from boot, `btime` in `/proc/stat`).
//!
//! Session handlers are async tasks inside their controller's process: they are listed
//! under it with the time they took up their current state, and without CPU time of their
//! own (theirs is in the controller's).

use mta_ipc::console::{TaskRow, TaskTime};
use mta_types::message::now_ms;

/// A process's times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcTimes {
    pub started_ms: u64,
    pub user_ms: u64,
    pub system_ms: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// Boot time, Unix seconds (`btime` in /proc/stat).
fn boot_secs() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Parses `/proc/<pid>/stat`'s text. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from after its last `)`.
pub fn parse_stat(text: &str, ticks: u64, boot_secs: u64) -> Option<ProcTimes> {
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    let ms = |t: u64| t * 1000 / ticks;
    Some(ProcTimes {
        started_ms: boot_secs * 1000 + ms(start),
        user_ms: ms(utime),
        system_ms: ms(stime),
    })
}

pub fn proc_times(pid: u32) -> Option<ProcTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text, ticks_per_second(), boot_secs()?)
}

/// The rows of `show tasks`, with times.
pub fn show_task_time(rows: &[TaskRow]) -> Vec<TaskTime> {
    let now = now_ms();
    rows.iter()
        .map(|r| {
            let own = if r.parent.is_none() {
                r.pid.and_then(proc_times)
            } else {
                None
            };
            let started_ms = match (&own, &r.parent) {
                (Some(t), _) => Some(t.started_ms),
                (None, Some(_)) => r.since_ms,
                (None, None) => None,
            };
            TaskTime {
                name: r.name.clone(),
                pid: r.pid,
                parent: r.parent.clone(),
                started_ms,
                uptime_secs: started_ms.map(|s| now.saturating_sub(s) / 1000),
                cpu_ms: own.map(|t| t.user_ms + t.system_ms),
                user_ms: own.map(|t| t.user_ms),
                system_ms: own.map(|t| t.system_ms),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may choose.
        let text = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 12345 1000 10 18446744073709551615";
        let t = parse_stat(text, 100, 1_700_000_000).unwrap();
        assert_eq!(t.user_ms, 2500);
        assert_eq!(t.system_ms, 750);
        assert_eq!(t.started_ms, 1_700_000_000_000 + 123_450);
        assert_eq!(parse_stat("garbage", 100, 0), None);
    }

    #[test]
    fn this_process_has_times() {
        let t = proc_times(std::process::id()).unwrap();
        let now = now_ms();
        assert!(
            t.started_ms <= now && t.started_ms > now - 3_600_000,
            "{t:?}"
        );
    }
}
