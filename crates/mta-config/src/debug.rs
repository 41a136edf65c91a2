//! `[debug]` — the knobs the console's `set config` changes at runtime. The TOML keys are the
//! Domino notes.ini names exactly (`SMTPDebug`, `SMTPDebugIO`, …).

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::{ConfigError, ValueError};

/// `[debug]` — knobs `set config` changes at runtime. TOML keys are the Domino notes.ini names
/// exactly; all default to 0 (off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugKnobs {
    /// `SMTPDebug`, 0..=3: inbound SMTP session logging (1 errors, 2 commands, 3 everything).
    #[serde(rename = "SMTPDebug", deserialize_with = "zero_to_three")]
    pub smtp_debug: u8,
    /// `SMTPDebugIO`, 0..=3: log the raw bytes of inbound sessions (3 includes message bodies).
    #[serde(rename = "SMTPDebugIO", deserialize_with = "zero_to_three")]
    pub smtp_debug_io: u8,
    /// `SMTPClientDebug`, 0..=3: outbound SMTP session logging.
    #[serde(rename = "SMTPClientDebug", deserialize_with = "zero_to_three")]
    pub smtp_client_debug: u8,
    /// `Log_MailRouting`, one of 0, 10, 20, 30, 40: router logging (10 minimal … 40 verbose).
    #[serde(rename = "Log_MailRouting", deserialize_with = "routing_level")]
    pub log_mail_routing: u8,
    /// `SMTPSaveImportErrors`, 0..=3: save messages that fail conversion in
    /// `<data_dir>/import-errors/` (1: a copy of each failing message, 2: also a `.trace`
    /// with the reason, 3: every message).
    #[serde(rename = "SMTPSaveImportErrors", deserialize_with = "zero_to_three")]
    pub smtp_save_import_errors: u8,
    /// `DebugRouterLookup`, 0..=3: log the router's directory lookups (1 the result, 2 also
    /// each name tried, 3 also every candidate of an ambiguous match).
    #[serde(rename = "DebugRouterLookup", deserialize_with = "zero_to_three")]
    pub debug_router_lookup: u8,
    /// `debug_tcp_resolver`, 0..=3: log every DNS query and its answer with TTLs (any
    /// value above 0; notes.ini takes 1).
    #[serde(rename = "debug_tcp_resolver", deserialize_with = "zero_to_three")]
    pub debug_tcp_resolver: u8,
    /// `debug_outfile`: every debug line (the knobs above) is also appended to this file;
    /// empty: none. A relative path is taken from the data directory.
    #[serde(rename = "debug_outfile")]
    pub debug_outfile: String,
}

fn check(name: &str, value: i64) -> Result<u8, ValueError> {
    let ok = if name == "Log_MailRouting" {
        matches!(value, 0 | 10 | 20 | 30 | 40)
    } else {
        (0..=3).contains(&value)
    };
    if ok {
        Ok(value as u8)
    } else if name == "Log_MailRouting" {
        Err(ValueError::RoutingLevel(value))
    } else {
        Err(ValueError::DebugLevel(value))
    }
}

fn zero_to_three<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    level("SMTPDebug", d)
}

fn routing_level<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    level("Log_MailRouting", d)
}

/// A level as written: an integer in the file (TOML), checked here so the error names the
/// range; a byte in an IPC frame (`TaskRequest::SetKnobs`, bincode), as `Serialize` wrote it.
fn level<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<u8, D::Error> {
    let value = if d.is_human_readable() {
        i64::deserialize(d)?
    } else {
        i64::from(u8::deserialize(d)?)
    };
    check(name, value).map_err(de::Error::custom)
}

impl DebugKnobs {
    /// The knob names, as written in the file and in `set config`.
    pub const NAMES: [&'static str; 8] = [
        "SMTPDebug",
        "SMTPDebugIO",
        "SMTPClientDebug",
        "Log_MailRouting",
        "SMTPSaveImportErrors",
        "DebugRouterLookup",
        "debug_tcp_resolver",
        "debug_outfile",
    ];

    /// The one knob whose value is text (a path), not a level.
    pub const OUTFILE: &'static str = "debug_outfile";

    fn canonical(name: &str) -> Option<&'static str> {
        Self::NAMES
            .into_iter()
            .find(|n| n.eq_ignore_ascii_case(name.trim()))
    }

    fn slot(&mut self, canonical: &str) -> &mut u8 {
        match canonical {
            "SMTPDebug" => &mut self.smtp_debug,
            "SMTPDebugIO" => &mut self.smtp_debug_io,
            "SMTPClientDebug" => &mut self.smtp_client_debug,
            "Log_MailRouting" => &mut self.log_mail_routing,
            "DebugRouterLookup" => &mut self.debug_router_lookup,
            "debug_tcp_resolver" => &mut self.debug_tcp_resolver,
            _ => &mut self.smtp_save_import_errors,
        }
    }

    /// Sets a knob by name (case-insensitive) from its text value, checking the range.
    /// On error nothing changes and the error names the knob.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let Some(canonical) = Self::canonical(name) else {
            return Err(ConfigError::Knob {
                name: name.to_string(),
                message: format!("unknown knob (expected one of: {})", Self::NAMES.join(", ")),
            });
        };
        let knob_err = |message: String| ConfigError::Knob {
            name: canonical.to_string(),
            message,
        };
        if canonical == Self::OUTFILE {
            // `set config debug_outfile ""` (or `-`, easier to type) turns it off.
            let path = value.trim().trim_matches('"');
            if path.contains('\0') {
                return Err(knob_err("a path cannot contain NUL".into()));
            }
            self.debug_outfile = if path == "-" {
                String::new()
            } else {
                path.to_string()
            };
            return Ok(());
        }
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| knob_err(format!("`{value}` is not an integer")))?;
        *self.slot(canonical) = check(canonical, n).map_err(|e| knob_err(e.to_string()))?;
        Ok(())
    }

    /// A level knob's value by name (case-insensitive); `None` for an unknown name and for
    /// `debug_outfile` (see [`DebugKnobs::value`]).
    pub fn get(&self, name: &str) -> Option<u8> {
        Some(match Self::canonical(name)? {
            "SMTPDebug" => self.smtp_debug,
            "SMTPDebugIO" => self.smtp_debug_io,
            "SMTPClientDebug" => self.smtp_client_debug,
            "Log_MailRouting" => self.log_mail_routing,
            "DebugRouterLookup" => self.debug_router_lookup,
            "debug_tcp_resolver" => self.debug_tcp_resolver,
            "debug_outfile" => return None,
            _ => self.smtp_save_import_errors,
        })
    }

    /// Any knob's value as text, as `set config` takes it back (an unset outfile is `""`).
    pub fn value(&self, name: &str) -> Option<String> {
        if Self::canonical(name)? == Self::OUTFILE {
            return Some(self.debug_outfile.clone());
        }
        self.get(name).map(|v| v.to_string())
    }

    /// Whether any knob writes debug lines (the outfile only matters then).
    pub fn any_on(&self) -> bool {
        self.smtp_debug > 0
            || self.smtp_debug_io > 0
            || self.smtp_client_debug > 0
            || self.log_mail_routing > 0
            || self.debug_router_lookup > 0
            || self.debug_tcp_resolver > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_get_are_case_insensitive() {
        let mut k = DebugKnobs::default();
        k.set("smtpdebug", "3").unwrap();
        k.set("LOG_MAILROUTING", "40").unwrap();
        k.set("SMTPSaveImportErrors", " 2 ").unwrap();
        assert_eq!(k.get("SMTPDebug"), Some(3));
        assert_eq!(k.get("log_mailrouting"), Some(40));
        assert_eq!(k.smtp_save_import_errors, 2);
        assert_eq!(k.get("nope"), None);
        k.set("DEBUG_OUTFILE", "/tmp/x.txt").unwrap();
        assert_eq!(k.value("debug_outfile").as_deref(), Some("/tmp/x.txt"));
        k.set("debug_outfile", "-").unwrap();
        assert_eq!(k.debug_outfile, "");
        k.set("debugrouterlookup", "3").unwrap();
        assert_eq!(k.debug_router_lookup, 3);
    }

    #[test]
    fn set_validates_and_names_the_knob() {
        let mut k = DebugKnobs::default();
        let e = k.set("smtpclientdebug", "4").unwrap_err();
        assert_eq!(e.key(), Some("SMTPClientDebug"));
        assert_eq!(
            e.to_string(),
            "debug knob `SMTPClientDebug`: `4` is out of range (0 to 3)"
        );
        let e = k.set("Log_MailRouting", "15").unwrap_err();
        assert!(
            e.to_string()
                .contains("`Log_MailRouting`: `15` is not one of 0, 10, 20, 30, 40"),
            "{e}"
        );
        let e = k.set("SMTPDebugIO", "lots").unwrap_err();
        assert!(e.to_string().contains("`lots` is not an integer"), "{e}");
        let e = k.set("SMTPDebugX", "1").unwrap_err();
        assert!(e.to_string().contains("unknown knob"), "{e}");
        assert!(k.set("SMTPDebug", "-1").is_err());
        assert_eq!(k, DebugKnobs::default(), "failed sets change nothing");
    }
}
