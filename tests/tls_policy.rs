//! Outbound TLS policy end to end (issue 28): DANE against real DNSSEC (zones signed by
//! Knot DNS, validated by unbound with the zones' keys as trust anchors:
//! `mta_testkit::dnssec`), MTA-STS against a real HTTPS policy server on 127.0.0.x:443 with
//! a test CA's certificate, TLS-RPT reports through our own queue, and an IPv6-only MX.
//!
//! Each test runs its own DNS servers, sinks (tests/support/smtp_sink.py on 127.0.0.x or
//! ::1, all on one port = the suite's `[outbound] port`) and suite; every process is
//! killed by PID when the test ends. The suite's resolver is unbound
//! (`[dns] nameservers`), the validating resolver whose AD bit smtpmta trusts.

use mta_testkit::dnssec::{SignedDns, Zone};
use mta_testkit::peers::{tail, Sink, StsServer};
use mta_testkit::{free_port, wait_for, RawSmtp, Suite, SuiteOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(40);

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A test CA (`ca.pem`, `ca-key.pem`) in `dir`.
fn make_ca(dir: &Path) -> PathBuf {
    let d = dir.display();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
         -keyout {d}/ca-key.pem -out {d}/ca.pem -subj /CN=Test-CA \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>&1"
    ));
    dir.join("ca.pem")
}

/// A certificate for `names` signed by the test CA: (cert, key).
fn ca_cert(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let d = dir.display();
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join(format!("{tag}.ext")),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\n",
            san.join(",")
        ),
    )
    .unwrap();
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout {d}/{tag}-key.pem -out {d}/{tag}.csr -subj /CN={} 2>&1 && \
         openssl x509 -req -in {d}/{tag}.csr -CA {d}/ca.pem -CAkey {d}/ca-key.pem -CAcreateserial \
         -days 2 -extfile {d}/{tag}.ext -out {d}/{tag}.pem 2>&1",
        names[0]
    ));
    (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}-key.pem")),
    )
}

/// A self-signed certificate for a name that is nobody's MX: DANE-EE ignores names.
fn self_signed(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let d = dir.display();
    sh(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
         -keyout {d}/{tag}-key.pem -out {d}/{tag}.pem -subj /CN=unrelated.example 2>&1"
    ));
    (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}-key.pem")),
    )
}

/// `3 1 1` association data: SHA-256 of the certificate's SubjectPublicKeyInfo.
fn spki_sha256(cert: &Path) -> String {
    let out = sh(&format!(
        "openssl x509 -in {} -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
        cert.display()
    ));
    out.split_whitespace().next().unwrap().to_string()
}

fn suite(dns: &SignedDns, port: u16, tls: &[String]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("outbound", format!("port = {port}")),
        ("outbound", "retry = [\"1s\"]".into()),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "command_timeout = \"20s\"".into()),
        ("dns", dns.nameserver_line()),
        ("dns", "timeout = \"2s\"".into()),
    ];
    for line in tls {
        sections.push(("outbound.tls", line.clone()));
    }
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

fn send(suite: &Suite, rcpt: &str) {
    let (mut c, greeting) = RawSmtp::connect(suite.smtp_port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@client.test>").starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(reply.starts_with("250"), "RCPT {rcpt}: {reply}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "From: sender@client.test\r\nTo: {rcpt}\r\nSubject: tls policy\r\n\r\nhello\r\n.\r\n"
        )
        .as_bytes(),
    );
    let reply = c.read_reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT");
}

/// Waits for a log line holding every one of `parts`.
fn wait_line(suite: &Suite, parts: &[&str]) -> String {
    wait_for(&format!("a log line with {parts:?}"), DEADLINE, || {
        let log = suite.log();
        log.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .ok_or_else(|| tail(&log, 25))
    })
}

/// The TLS version each message of the sink came over (None: plaintext).
fn tls_of(sink: &Sink) -> Vec<Option<String>> {
    sink.messages()
        .iter()
        .map(|(env, _)| env["tls"].as_str().map(str::to_string))
        .collect()
}

fn console(suite: &Suite, args: &[&str]) -> String {
    let out = suite.mtacon(args);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn dane_authenticates_by_tlsa_defers_mismatch_and_bogus_and_unsigned_falls_back() {
    let certs = tempfile::tempdir().unwrap();
    let (good_cert, good_key) = self_signed(certs.path(), "good");
    let (other_cert, _) = self_signed(certs.path(), "other");
    let port = free_port();
    let tlsa = |cert: &Path| format!("_{port}._tcp.mx TLSA 3 1 1 {}", spki_sha256(cert));
    let zones = [
        Zone::signed(
            "sec.test",
            &[
                "@ MX 10 mx".into(),
                "mx A 127.0.0.21".into(),
                tlsa(&good_cert),
            ],
        ),
        Zone::signed(
            "mismatch.test",
            &[
                "@ MX 10 mx".into(),
                "mx A 127.0.0.22".into(),
                tlsa(&other_cert),
            ],
        ),
        Zone::unsigned(
            "plain.test",
            &[
                "@ MX 10 mx".into(),
                "mx A 127.0.0.23".into(),
                tlsa(&other_cert),
            ],
        ),
        Zone::bogus(
            "bogus.test",
            &[
                "@ MX 10 mx".into(),
                "mx A 127.0.0.24".into(),
                tlsa(&good_cert),
            ],
        ),
        Zone::unsigned("v6.test", &["@ MX 10 mx".into(), "mx AAAA ::1".into()]),
    ];
    let dns = SignedDns::start(&zones);
    let tls_args = [
        "--tls",
        good_cert.to_str().unwrap(),
        good_key.to_str().unwrap(),
    ];
    let sec = Sink::start_on("127.0.0.21", port, &tls_args);
    let mismatch = Sink::start_on("127.0.0.22", port, &tls_args);
    let plain = Sink::start_on("127.0.0.23", port, &[]);
    let bogus = Sink::start_on("127.0.0.24", port, &tls_args);
    let v6 = Sink::start_on("::1", port, &[]);
    let suite = suite(&dns, port, &[]);

    for rcpt in [
        "a@sec.test",
        "b@mismatch.test",
        "c@plain.test",
        "d@bogus.test",
        "e@v6.test",
    ] {
        send(&suite, rcpt);
    }
    // DANE-EE match: delivered over TLS although the certificate names nobody.
    sec.wait_count(&suite, 1, DEADLINE);
    assert!(tls_of(&sec)[0].is_some(), "DANE delivery used TLS");
    let line = wait_line(&suite, &["to=<a@sec.test>", "status=sent"]);
    assert!(line.contains("tls policy dane (1 TLSA)"), "{line}");
    // Unsigned zone: its TLSA is not trusted; `may` applies (the sink has no STARTTLS).
    plain.wait_count(&suite, 1, DEADLINE);
    assert_eq!(tls_of(&plain), vec![None]);
    // IPv6: the MX has only an AAAA record, on ::1.
    v6.wait_count(&suite, 1, DEADLINE);
    wait_line(
        &suite,
        &["to=<e@v6.test>", "relay=mx.v6.test[::1]", "status=sent"],
    );
    // Mismatch: deferred as tlsa-invalid, nothing sent (no plaintext retry).
    let line = wait_line(&suite, &["to=<b@mismatch.test>", "status=deferred"]);
    assert!(
        line.contains("tlsa-invalid") && line.contains("not sent in plaintext"),
        "{line}"
    );
    // Bogus: the validator answers SERVFAIL for the zone (its MX already): deferred.
    let line = wait_line(&suite, &["to=<d@bogus.test>", "status=deferred"]);
    assert!(line.contains("Server Failure"), "{line}");
    assert_eq!(mismatch.count(), 0, "nothing reached the mismatching host");
    let router = console(&suite, &["tell", "router", "show"]);
    assert!(
        router.contains("mismatch.test") && router.contains("tlsa-invalid"),
        "{router}"
    );
    assert_eq!(
        bogus.count(),
        0,
        "nothing reached the host of the bogus zone"
    );

    let shown = console(&suite, &["show", "tls", "policy", "sec.test"]);
    assert!(
        shown.contains("DNSSEC-validated") && shown.contains("dane (1 TLSA)"),
        "{shown}"
    );
    assert!(shown.contains("TLSA 3 1 1"), "{shown}");
    let shown = console(&suite, &["show", "tls", "policy", "plain.test"]);
    assert!(
        shown.contains("not validated") && shown.contains("mx.plain.test: may"),
        "{shown}"
    );
}

/// The policy text RFC 8461 3.2 describes.
fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

fn sts_records(mx_ip: &str, id: &str, rua: bool) -> Vec<String> {
    let mut r = vec![
        "@ MX 10 mx".to_string(),
        format!("mx A {mx_ip}"),
        "mta-sts A 127.0.0.30".to_string(),
        format!("_mta-sts TXT \"v=STSv1; id={id}\""),
    ];
    if rua {
        r.push("_smtp._tls TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@reports.test\"".into());
    }
    r
}

#[test]
fn mta_sts_enforces_verified_tls_testing_reports_and_a_cached_policy_survives_a_fetch_failure() {
    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path());
    let sts_hosts = [
        "mta-sts.sts.test",
        "mta-sts.nostls.test",
        "mta-sts.wrongname.test",
        "mta-sts.testing.test",
    ];
    let (web_cert, web_key) = ca_cert(certs.path(), "web", &sts_hosts);
    let (mx_cert, mx_key) = ca_cert(certs.path(), "mx", &["mx.sts.test", "mx.testing.test"]);
    let (wrong_cert, wrong_key) = ca_cert(certs.path(), "wrong", &["other.example"]);
    let policies = tempfile::tempdir().unwrap();
    let write = |host: &str, text: &str| {
        std::fs::write(policies.path().join(format!("{host}.txt")), text).unwrap()
    };
    write("mta-sts.sts.test", &policy("enforce", "mx.sts.test"));
    write("mta-sts.nostls.test", &policy("enforce", "mx.nostls.test"));
    write(
        "mta-sts.wrongname.test",
        &policy("enforce", "*.wrongname.test"),
    );
    write(
        "mta-sts.testing.test",
        &policy("testing", "mx.testing.test"),
    );
    let web = StsServer::start("127.0.0.30", &web_cert, &web_key, policies.path());

    let port = free_port();
    let mut dns = SignedDns::start(&[
        Zone::unsigned("sts.test", &sts_records("127.0.0.31", "1", true)),
        Zone::unsigned("nostls.test", &sts_records("127.0.0.32", "1", false)),
        Zone::unsigned("wrongname.test", &sts_records("127.0.0.33", "1", false)),
        Zone::unsigned("testing.test", &sts_records("127.0.0.34", "1", true)),
        Zone::unsigned(
            "reports.test",
            &["@ MX 10 mx".into(), "mx A 127.0.0.35".into()],
        ),
    ]);
    let good = ["--tls", mx_cert.to_str().unwrap(), mx_key.to_str().unwrap()];
    let wrong = [
        "--tls",
        wrong_cert.to_str().unwrap(),
        wrong_key.to_str().unwrap(),
    ];
    let sts = Sink::start_on("127.0.0.31", port, &good);
    let nostls = Sink::start_on("127.0.0.32", port, &[]);
    let wrongname = Sink::start_on("127.0.0.33", port, &wrong);
    let testing = Sink::start_on("127.0.0.34", port, &wrong);
    let reports = Sink::start_on("127.0.0.35", port, &[]);
    let mut suite = suite(&dns, port, &[format!("ca_file = \"{}\"", ca.display())]);

    for rcpt in [
        "a@sts.test",
        "b@nostls.test",
        "c@wrongname.test",
        "d@testing.test",
    ] {
        send(&suite, rcpt);
    }
    // enforce + matching MX + a certificate the CA signed for the MX name: verified TLS.
    sts.wait_count(&suite, 1, DEADLINE);
    assert!(tls_of(&sts)[0].is_some());
    let line = wait_line(&suite, &["to=<a@sts.test>", "status=sent"]);
    assert!(line.contains("tls policy mta-sts enforce"), "{line}");
    // testing: delivered though the certificate names another host; counted below.
    testing.wait_count(&suite, 1, DEADLINE);
    // enforce, no STARTTLS / a certificate for another name: deferred, nothing sent.
    let line = wait_line(&suite, &["to=<b@nostls.test>", "status=deferred"]);
    assert!(line.contains("starttls-not-supported"), "{line}");
    let line = wait_line(&suite, &["to=<c@wrongname.test>", "status=deferred"]);
    assert!(line.contains("certificate-host-mismatch"), "{line}");
    assert_eq!((nostls.count(), wrongname.count()), (0, 0));

    let shown = console(&suite, &["show", "tls", "policy", "sts.test"]);
    assert!(
        shown.contains("MTA-STS: id 1 mode enforce max_age 86400 mx mx.sts.test"),
        "{shown}"
    );

    // TLS-RPT: sent now, through our own queue, to the rua of sts.test and testing.test.
    let told = console(&suite, &["tell", "smtpmta", "send", "tls", "reports"]);
    assert!(
        told.contains("sts.test: report sent to tlsrpt@reports.test"),
        "{told}"
    );
    reports.wait_count(&suite, 2, DEADLINE);
    let reports_json = decode_reports(&reports);
    let testing_report = reports_json
        .iter()
        .find(|r| r["policies"][0]["policy"]["policy-domain"] == "testing.test")
        .expect("testing.test report");
    let p = &testing_report["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    // At least the delivered session (a retry of the list may add one).
    let failed = p["summary"]["total-failure-session-count"]
        .as_u64()
        .unwrap_or(0);
    assert!(failed >= 1, "{p}");
    assert_eq!(
        p["failure-details"][0]["failed-session-count"], failed,
        "{p}"
    );
    assert_eq!(
        p["failure-details"][0]["result-type"], "certificate-host-mismatch",
        "{p}"
    );
    assert_eq!(
        p["failure-details"][0]["receiving-mx-hostname"], "mx.testing.test",
        "{p}"
    );
    let sts_report = reports_json
        .iter()
        .find(|r| r["policies"][0]["policy"]["policy-domain"] == "sts.test")
        .expect("sts.test report");
    assert_eq!(
        sts_report["policies"][0]["summary"]["total-successful-session-count"], 1,
        "{sts_report}"
    );
    assert!(sts_report["date-range"]["start-datetime"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));

    // A cached policy outlives a failed refresh: the TXT id changes, the policy server
    // answers 404, and the MX no longer offers STARTTLS: enforce still holds (deferred,
    // never plaintext).
    suite.stop();
    drop(sts);
    let nostarttls = Sink::start_on("127.0.0.31", port, &[]);
    std::fs::remove_file(policies.path().join("mta-sts.sts.test.txt")).unwrap();
    dns.set_records("sts.test", &sts_records("127.0.0.31", "2", true));
    wait_for("the new TXT id", DEADLINE, || {
        let txt = dns.dig("TXT", "_mta-sts.sts.test");
        txt.contains("id=2").then_some(()).ok_or(txt)
    });
    let fetches = web.hits("mta-sts.sts.test");
    suite.launch();
    send(&suite, "f@sts.test");
    let line = wait_line(&suite, &["to=<f@sts.test>", "status=deferred"]);
    assert!(line.contains("starttls-not-supported"), "{line}");
    wait_line(&suite, &["MTA-STS policy of sts.test", "HTTP status 404"]);
    assert!(
        web.hits("mta-sts.sts.test") > fetches,
        "a refresh was tried"
    );
    assert_eq!(nostarttls.count(), 0, "nothing in plaintext");
}

/// Each report's JSON, decoded from the sink's messages by Python's email and gzip.
fn decode_reports(sink: &Sink) -> Vec<serde_json::Value> {
    let script = r#"
import email, gzip, json, sys
msg = email.message_from_binary_file(open(sys.argv[1], "rb"))
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "tlsrpt"
for part in msg.walk():
    if part.get_content_type() == "application/tlsrpt+gzip":
        print(gzip.decompress(part.get_payload(decode=True)).decode())
"#;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sink.dir.path()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "eml") {
            let o = Command::new(mta_testkit::python3())
                .args(["-c", script])
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out.push(serde_json::from_slice(&o.stdout).unwrap());
        }
    }
    out
}
