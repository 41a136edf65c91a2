//! Rates as the configuration writes them (`"60/min"`) and the GCRA (generic cell rate
//! algorithm) that enforces one, with no I/O and no clock of its own: the caller passes
//! "now" and keeps the one number of state per key (the theoretical arrival time, TAT), so
//! the same arithmetic serves an in-memory table today and a Redis script later (one
//! `GET`/`SET` of the TAT per check).
//!
//! GCRA: each event moves the TAT on by the emission interval `period / count`; an event is
//! refused when it would push the TAT more than `tolerance` ahead of now. With a burst of
//! `b`, `tolerance = (b - 1) * interval`: `b` events at once, then one per interval.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `count` events per `period`, e.g. `60/min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

/// Why a rate text does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rate: a count per period such as \"60/min\", \"10/s\", \"500/h\", \"1000/d\" or \"5/10s\"")]
pub struct BadRate(pub String);

impl FromStr for Rate {
    type Err = BadRate;

    /// `N/unit` or `N/<n><unit>`: units `s` (`sec`, `second`), `m` (`min`, `minute`),
    /// `h` (`hour`), `d` (`day`); N at least 1, the period more than zero.
    fn from_str(s: &str) -> Result<Rate, BadRate> {
        let bad = || BadRate(s.to_string());
        let (count, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let digits = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let times: u64 = match &per[..digits] {
            "" => 1,
            n => n.parse().map_err(|_| bad())?,
        };
        let unit = match per[digits..].trim() {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            _ => return Err(bad()),
        };
        let period = Duration::from_secs(times.checked_mul(unit).ok_or_else(bad)?);
        if count == 0 || period.is_zero() {
            return Err(bad());
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let unit = match secs {
            1 => "s".to_string(),
            60 => "min".to_string(),
            3600 => "h".to_string(),
            86400 => "d".to_string(),
            n => format!("{n}s"),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The GCRA for one rate and burst. Times are microseconds on the caller's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval: `period / count`.
    interval_us: u64,
    /// How far ahead of now the TAT may run: `(burst - 1) * interval`.
    tolerance_us: u64,
}

impl Gcra {
    /// `rate`, allowing `burst` events at once (at least 1).
    pub fn new(rate: Rate, burst: u32) -> Gcra {
        let period_us = u64::try_from(rate.period.as_micros()).unwrap_or(u64::MAX);
        let interval_us = (period_us / u64::from(rate.count.max(1))).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// `rate` with a burst of its whole count (`60/min`: 60 at once, then one a second):
    /// Postfix anvil's "N per time unit" as closely as a GCRA gets.
    pub fn full_burst(rate: Rate) -> Gcra {
        Gcra::new(rate, rate.count)
    }

    /// One event at `now_us` against the key's TAT (0: never seen). Allowed: the TAT moves
    /// on and `Ok`. Refused: the TAT is unchanged and `Err` says how long until the next
    /// event would be allowed.
    pub fn check(&self, tat_us: &mut u64, now_us: u64) -> Result<(), Duration> {
        let tat = (*tat_us).max(now_us);
        let allowed_at = tat.saturating_sub(self.tolerance_us);
        if allowed_at > now_us {
            return Err(Duration::from_micros(allowed_at - now_us));
        }
        *tat_us = tat.saturating_add(self.interval_us);
        Ok(())
    }

    /// Whether a key with this TAT is back to its initial state at `now_us` (its entry
    /// can be forgotten without changing any later answer).
    pub fn is_idle(tat_us: u64, now_us: u64) -> bool {
        tat_us <= now_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "60/min".parse().unwrap();
        assert_eq!((r.count, r.period), (60, Duration::from_secs(60)));
        assert_eq!(r.to_string(), "60/min");
        assert_eq!(
            "10/s".parse::<Rate>().unwrap().period,
            Duration::from_secs(1)
        );
        assert_eq!(" 5 / 10s ".parse::<Rate>().unwrap().to_string(), "5/10s");
        assert_eq!("500/hour".parse::<Rate>().unwrap().to_string(), "500/h");
        assert_eq!("1000/d".parse::<Rate>().unwrap().period.as_secs(), 86400);
        for bad in [
            "",
            "60",
            "0/min",
            "60/",
            "60/fortnight",
            "x/min",
            "5/0s",
            "-1/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn a_full_burst_then_one_per_interval() {
        let g = Gcra::full_burst("3/min".parse().unwrap());
        let mut tat = 0;
        let t0 = 1_000_000_000;
        for _ in 0..3 {
            assert_eq!(g.check(&mut tat, t0), Ok(()));
        }
        let wait = g.check(&mut tat, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // A refusal does not move the TAT: 20 s later exactly one more is allowed.
        assert!(g.check(&mut tat, t0 + 19_999_999).is_err());
        assert_eq!(g.check(&mut tat, t0 + 20_000_000), Ok(()));
        assert!(g.check(&mut tat, t0 + 20_000_000).is_err());
        // After a whole idle period the key is as new.
        assert!(Gcra::is_idle(tat, t0 + 80_000_000));
        assert!(!Gcra::is_idle(tat, t0 + 20_000_000));
    }

    #[test]
    fn a_burst_of_one_spaces_events() {
        let g = Gcra::new("2/s".parse().unwrap(), 1);
        let mut tat = 0;
        assert!(g.check(&mut tat, 10).is_ok());
        assert!(g.check(&mut tat, 10 + 499_999).is_err());
        assert!(g.check(&mut tat, 10 + 500_000).is_ok());
    }
}
