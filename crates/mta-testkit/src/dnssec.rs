//! Real DNSSEC for tests: zones served by Knot DNS (`knotd`, automatic signing with its
//! default policy: ECDSA P-256, keys made at first load) on 127.0.0.1:<port>, and unbound
//! validating them on 127.0.0.1:<port>, with each signed zone's DS as its trust anchor.
//! Both run in the test's own folder and are killed by PID on drop.
//!
//! Point the suite's resolver at it with `[dns] nameservers = ["127.0.0.1:<port>"]`
//! (`SignedDns::nameserver_line`). unbound answers with the AD bit for data of a signed
//! zone (`Zone::signed`), without it for an unsigned one (`Zone::unsigned`, no anchor
//! above it), and SERVFAIL for a zone whose anchor does not match its key
//! (`Zone::bogus`: signed, but trusted with a wrong DS) — the three DNSSEC states a
//! validating resolver tells apart (secure, insecure, bogus).
//!
//! Records are zone-file lines relative to the zone's origin (`@ MX 10 mx`,
//! `mx A 127.0.0.21`, `_25._tcp.mx TLSA 3 1 1 <hex>`); SOA and NS are added.

use crate::{free_port, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Signed, with its real DS as unbound's trust anchor: secure (AD).
    Signed,
    /// Not signed, no anchor: insecure (no AD).
    Unsigned,
    /// Signed, but the anchor's digest is wrong: bogus (SERVFAIL).
    Bogus,
}

#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    pub records: Vec<String>,
    pub trust: Trust,
}

impl Zone {
    pub fn signed(name: &str, records: &[String]) -> Zone {
        Zone::new(name, records, Trust::Signed)
    }

    pub fn unsigned(name: &str, records: &[String]) -> Zone {
        Zone::new(name, records, Trust::Unsigned)
    }

    pub fn bogus(name: &str, records: &[String]) -> Zone {
        Zone::new(name, records, Trust::Bogus)
    }

    fn new(name: &str, records: &[String], trust: Trust) -> Zone {
        Zone {
            name: name.trim_end_matches('.').to_string(),
            records: records.to_vec(),
            trust,
        }
    }
}

/// Knot (authoritative, signing) and unbound (validating) for the test's zones.
pub struct SignedDns {
    knot: Child,
    unbound: Child,
    /// unbound's port on 127.0.0.1: the suite's `[dns] nameservers`.
    pub port: u16,
    pub dir: tempfile::TempDir,
    knot_conf: std::path::PathBuf,
    zones: Vec<Zone>,
}

fn kill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

impl SignedDns {
    pub fn start(zones: &[Zone]) -> SignedDns {
        let dir = tempfile::Builder::new()
            .prefix("dnssec-")
            .tempdir()
            .unwrap();
        let knot_port = free_port();
        let knot_conf = write_knot(dir.path(), knot_port, zones);
        let knot = Command::new("knotd")
            .args(["-c", knot_conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("knot.log")).unwrap())
            .spawn()
            .expect("knotd (Debian package knot; scripts/test installs it)");
        let mut anchors = String::new();
        for zone in zones.iter().filter(|z| z.trust != Trust::Unsigned) {
            let ds = wait_for(
                &format!("Knot signing {}", zone.name),
                Duration::from_secs(20),
                || zone_ds(&knot_conf, &zone.name, dir.path()),
            );
            anchors.push_str(&match zone.trust {
                Trust::Bogus => spoil(&ds),
                _ => ds,
            });
            anchors.push('\n');
        }
        let port = free_port();
        let unbound_conf = write_unbound(dir.path(), port, knot_port, zones, &anchors);
        let unbound = Command::new("unbound")
            .args(["-d", "-c", unbound_conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("unbound.log")).unwrap())
            .spawn()
            .expect("unbound (Debian package unbound; scripts/test installs it)");
        let dns = SignedDns {
            knot,
            unbound,
            port,
            dir,
            knot_conf,
            zones: zones.to_vec(),
        };
        let probe = zones.first().map(|z| z.name.clone()).unwrap_or_default();
        wait_for("unbound answering", Duration::from_secs(20), || {
            if crate::peers::dns_answers(port, &probe, 6, Duration::from_millis(300)) {
                Ok(())
            } else {
                Err(format!(
                    "no answer; unbound log:\n{}",
                    dns.log("unbound.log")
                ))
            }
        });
        dns
    }

    /// `nameservers = ["127.0.0.1:<port>"]`, for the suite's `[dns]` section.
    pub fn nameserver_line(&self) -> String {
        format!("nameservers = [\"127.0.0.1:{}\"]", self.port)
    }

    /// Replaces a zone's records and has Knot load them (re-signed at once); unbound keeps
    /// answers at most 1 s (`cache-max-ttl`), so see [`SignedDns::dig`] for when it shows.
    pub fn set_records(&mut self, zone: &str, records: &[String]) {
        let z = self
            .zones
            .iter_mut()
            .find(|z| z.name == zone)
            .expect("a zone of this server");
        z.records = records.to_vec();
        write_zone_file(self.dir.path(), z);
        let out = Command::new("knotc")
            .args(["-c", self.knot_conf.to_str().unwrap(), "zone-reload", zone])
            .output()
            .expect("knotc");
        assert!(
            out.status.success(),
            "knotc zone-reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kdig +short <kind> <name>` through unbound: the answer's records, one a line.
    pub fn dig(&self, kind: &str, name: &str) -> String {
        let out = Command::new("kdig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.port.to_string(),
                "+short",
                kind,
                name,
            ])
            .output()
            .expect("kdig (Debian package knot-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        kill(&mut self.unbound);
        kill(&mut self.knot);
    }
}

fn write_knot(dir: &Path, port: u16, zones: &[Zone]) -> std::path::PathBuf {
    let d = dir.display();
    for sub in ["zones", "db", "run"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let mut conf = format!(
        "server:\n    listen: 127.0.0.1@{port}\n    rundir: {d}/run\ndatabase:\n    storage: {d}/db\n\
         control:\n    listen: {d}/run/knot.sock\nlog:\n  - target: stderr\n    any: info\n\
         template:\n  - id: default\n    storage: {d}/zones\n    file: \"%s.zone\"\n    zonefile-sync: -1\n\
         \x20   zonefile-load: difference-no-serial\n    journal-content: all\nzone:\n"
    );
    for zone in zones {
        write_zone_file(dir, zone);
        conf.push_str(&format!("  - domain: {}\n", zone.name));
        if zone.trust != Trust::Unsigned {
            conf.push_str("    dnssec-signing: on\n");
        }
    }
    let path = dir.join("knot.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

fn write_zone_file(dir: &Path, zone: &Zone) {
    let mut text = format!(
        "$ORIGIN {n}.\n$TTL 300\n@ SOA ns.{n}. hostmaster.{n}. 1 3600 600 86400 300\n@ NS ns.{n}.\nns A 127.0.0.1\n",
        n = zone.name
    );
    for r in &zone.records {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(dir.join("zones").join(format!("{}.zone", zone.name)), text).unwrap();
}

/// The zone's first DS record (`keymgr … ds`), once Knot has made its keys.
fn zone_ds(conf: &Path, zone: &str, dir: &Path) -> Result<String, String> {
    let out = Command::new("keymgr")
        .args(["-c", conf.to_str().unwrap(), &format!("{zone}."), "ds"])
        .output()
        .map_err(|e| format!("keymgr: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ds = text
        .lines()
        .find(|l| l.contains(" DS ") && l.split_whitespace().nth(4) == Some("2"))
        .map(str::to_string);
    ds.ok_or_else(|| {
        format!(
            "no DS yet ({}); knot log:\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            std::fs::read_to_string(dir.join("knot.log")).unwrap_or_default()
        )
    })
}

/// The DS with its digest's first byte changed: a trust anchor that matches no key.
fn spoil(ds: &str) -> String {
    let mut fields: Vec<String> = ds.split_whitespace().map(str::to_string).collect();
    if let Some(digest) = fields.last_mut() {
        let flipped = if digest.starts_with('0') { "1" } else { "0" };
        digest.replace_range(0..1, flipped);
    }
    fields.join(" ")
}

fn write_unbound(
    dir: &Path,
    port: u16,
    knot_port: u16,
    zones: &[Zone],
    anchors: &str,
) -> std::path::PathBuf {
    let d = dir.display();
    std::fs::write(dir.join("anchors.txt"), anchors).unwrap();
    let mut conf = format!(
        "server:\n    interface: 127.0.0.1@{port}\n    port: {port}\n    do-daemonize: no\n    use-syslog: no\n\
         \x20   logfile: \"\"\n    username: \"\"\n    chroot: \"\"\n    directory: \"{d}\"\n    pidfile: \"\"\n\
         \x20   do-ip6: no\n    access-control: 127.0.0.0/8 allow\n    local-zone: \"test.\" nodefault\n\
         \x20   module-config: \"validator iterator\"\n    val-log-level: 2\n    verbosity: 1\n\
         \x20   do-not-query-localhost: no\n    harden-dnssec-stripped: yes\n    auto-trust-anchor-file: \"\"\n\
         \x20   cache-max-ttl: 1\n    cache-max-negative-ttl: 1\n"
    );
    if !anchors.trim().is_empty() {
        conf.push_str(&format!("    trust-anchor-file: \"{d}/anchors.txt\"\n"));
    }
    for zone in zones {
        conf.push_str(&format!(
            "stub-zone:\n    name: \"{}\"\n    stub-addr: 127.0.0.1@{knot_port}\n",
            zone.name
        ));
    }
    let path = dir.join("unbound.conf");
    std::fs::write(&path, conf).unwrap();
    path
}
