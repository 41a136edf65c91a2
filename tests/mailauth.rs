//! Mail authentication end to end, with real DNS (dnsmasq: SPF, DKIM key and DMARC TXT
//! records in the test zone) and a third-party DKIM implementation (dkimpy, through
//! tests/support/dkim_tool.py): our signatures verify there, for RSA and Ed25519, and stop
//! verifying once the body is altered; mail signed by dkimpy gets `dkim=pass` here; SPF and
//! DMARC results; `dmarc_reject`; bad input (malformed signature, a 10,000-byte TXT record,
//! a DNS server that never answers, a short RSA key).
//! Needs: python3 with dkimpy, dnspython and pynacl (scripts/test installs them), dnsmasq.

use mta_testkit::peers::{tail, Dns, Sink};
use mta_testkit::{bin, wait_for, RawSmtp, Suite, SuiteOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(name)
}

/// `smtpmta dkim-keygen`: the key file and the TXT record's value.
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let out_path = dir.join(format!("{domain}.{selector}.pem"));
    let out = Command::new(bin("smtpmta"))
        .args(["dkim-keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&out_path)
        .output()
        .expect("smtpmta dkim-keygen");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT \"")))
        .unwrap_or_else(|| panic!("no TXT record printed:\n{text}"));
    let value = line.split('"').nth(1).expect("quoted value").to_string();
    assert!(text.contains("[[dkim]]"), "{text}");
    (out_path, value)
}

/// A dnsmasq TXT record, split into character-strings of at most 250 bytes.
fn txt(name: &str, value: &str) -> String {
    let chunks: Vec<&str> = value
        .as_bytes()
        .chunks(250)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", chunks.join(","))
}

fn dkim_entry(domain: &str, selector: &str, key: &Path, algorithm: &str) -> String {
    format!(
        "\n[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\nalgorithm = \"{algorithm}\"\n",
        key.display()
    )
}

fn dkim_tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(mta_testkit::python3())
        .arg(support("dkim_tool.py"))
        .args(args)
        .output()
        .expect("python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sends one message; returns the reply to the end of DATA.
fn send_from(
    port: u16,
    source: Option<Ipv4Addr>,
    helo: &str,
    from: &str,
    rcpt: &str,
    content: &[u8],
) -> String {
    let (mut c, greeting) = RawSmtp::connect_from(source, port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(reply.starts_with("250"), "RCPT {rcpt}: {reply}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(content);
    c.send(b".\r\n");
    let reply = c.read_reply();
    c.cmd("QUIT");
    reply
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: someone@remote.test\r\nSubject: {subject}\r\n\
         Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n\
         The body line one.\r\n  Spaced   line  \r\n\r\n\r\n"
    )
    .into_bytes()
}

fn stat(suite: &Suite, name: &str) -> u64 {
    let out = suite.mtacon(&["show", "stat", "mail"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in show stat mail:\n{text}"))
}

#[test]
fn signed_mail_verifies_with_dkimpy_for_rsa_and_ed25519_and_fails_once_altered() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_txt) = keygen(keys.path(), "rsa.test", "r2026", "rsa-sha256");
    let (ed_key, ed_txt) = keygen(keys.path(), "ed.test", "e2026", "ed25519-sha256");
    let dns = Dns::start_with(&[
        txt("r2026._domainkey.rsa.test", &rsa_txt),
        txt("e2026._domainkey.ed.test", &ed_txt),
    ]);
    let sink = Sink::start(&[]);
    let suite = Suite::start(&SuiteOptions {
        top: dkim_entry("rsa.test", "r2026", &rsa_key, "rsa-sha256")
            + &dkim_entry("ed.test", "e2026", &ed_key, "ed25519-sha256"),
        sections: vec![
            (
                "outbound",
                format!("relay_host = \"127.0.0.1:{}\"", sink.port),
            ),
            ("outbound", "retry = [\"1s\"]".into()),
            ("dns", format!("nameservers = [\"127.0.0.1:{}\"]", dns.port)),
        ],
        ..SuiteOptions::default()
    });
    let sent = [
        ("a@rsa.test", "rsa", message("a@rsa.test", "rsa")),
        ("b@ed.test", "ed", message("b@ed.test", "ed")),
        // No key for other.test: relayed untouched, but its envelope sender's domain has one.
        (
            "c@rsa.test",
            "fallback",
            message("c@other.test", "fallback"),
        ),
        (
            "d@other.test",
            "unsigned",
            message("d@other.test", "unsigned"),
        ),
    ];
    for (from, _, content) in &sent {
        let reply = send_from(
            suite.smtp_port,
            None,
            "client.test",
            from,
            "x@remote.test",
            content,
        );
        assert!(reply.starts_with("250"), "{reply}");
    }
    sink.wait_count(&suite, sent.len(), Duration::from_secs(30));
    let received = sink.messages();
    for (_, subject, content) in &sent {
        let (_, got) = received
            .iter()
            .find(|(_, c)| String::from_utf8_lossy(c).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("{subject} not at the sink"));
        // Byte-exact relay: what the client sent is the tail of what the sink got (only our
        // DKIM-Signature and Received headers are in front of it).
        assert!(
            got.ends_with(content),
            "{subject}: content changed on the way"
        );
        let file = sink.dir.path().join(format!("check-{subject}.eml"));
        std::fs::write(&file, got).unwrap();
        let (ok, why) = dkim_tool(&["verify", &dns.port.to_string(), file.to_str().unwrap()]);
        if *subject == "unsigned" {
            assert!(
                !String::from_utf8_lossy(got).contains("DKIM-Signature"),
                "signed without a key"
            );
            assert!(!ok);
            continue;
        }
        assert!(
            String::from_utf8_lossy(got).starts_with("DKIM-Signature:"),
            "{subject}"
        );
        assert!(ok, "{subject}: dkimpy says {why}");
        // The sink alters the body: the signature no longer verifies.
        let altered =
            String::from_utf8_lossy(got).replace("The body line one.", "The body line 1.");
        std::fs::write(&file, altered).unwrap();
        let (ok, why) = dkim_tool(&["verify", &dns.port.to_string(), file.to_str().unwrap()]);
        assert!(!ok, "{subject}: an altered body still verifies: {why}");
    }
    let log = suite.log();
    assert!(
        log.contains("dkim signed d=rsa.test s=r2026 a=rsa-sha256"),
        "{}",
        tail(&log, 30)
    );
    assert!(
        log.contains("dkim signed d=ed.test s=e2026 a=ed25519-sha256"),
        "{}",
        tail(&log, 30)
    );
    assert_eq!(stat(&suite, "Mail.DKIM.Signed"), 3);
    // `trace` names the key that signs mail from an address's domain.
    let out = suite.mtacon(&["trace", "a@rsa.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DKIM: mail from rsa.test leaving for another host is signed with d=rsa.test s=r2026 a=rsa-sha256"), "{text}");
    let out = suite.mtacon(&["trace", "d@other.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DKIM: no [[dkim]] key for other.test"),
        "{text}"
    );
}

#[test]
fn a_missing_or_short_key_is_a_startup_error_naming_the_entry() {
    let keys = tempfile::tempdir().unwrap();
    // Missing file.
    let mut suite = Suite::prepare(&SuiteOptions {
        top: dkim_entry(
            "a.test",
            "s1",
            &keys.path().join("missing.pem"),
            "rsa-sha256",
        ),
        ..SuiteOptions::default()
    });
    let err = suite.try_launch(Duration::from_secs(10)).unwrap_err();
    assert!(
        err.contains("key `dkim[0].private_key`") && err.contains("missing.pem"),
        "{err}"
    );
    // A 512-bit RSA key (RFC 8301: at least 1024).
    let short = keys.path().join("short.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:512",
            "-out",
        ])
        .arg(&short)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut suite = Suite::prepare(&SuiteOptions {
        top: dkim_entry("a.test", "s1", &short, "rsa-sha256"),
        ..SuiteOptions::default()
    });
    let err = suite.try_launch(Duration::from_secs(10)).unwrap_err();
    assert!(
        err.contains("key `dkim[0].private_key`") && err.contains("512 bits is too short"),
        "{err}"
    );
    // dkim-keygen refuses to make one.
    let out = Command::new(bin("smtpmta"))
        .args([
            "dkim-keygen",
            "--domain",
            "a.test",
            "--selector",
            "s",
            "--bits",
            "512",
            "--out",
        ])
        .arg(keys.path().join("new.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1024"));
}

/// A 512-bit RSA key made with openssl (our own keygen refuses to make one): the PEM file
/// and its `v=DKIM1` record value.
fn short_rsa_key(dir: &Path) -> (PathBuf, String) {
    let pem = dir.join("short.pem");
    let out = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&pem)
        .arg("512")
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .expect("openssl");
    assert!(
        der.status.success(),
        "{}",
        String::from_utf8_lossy(&der.stderr)
    );
    let b64 = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&der.stdout)?;
            child.wait_with_output()
        })
        .expect("base64");
    let p = String::from_utf8(b64.stdout).unwrap();
    (pem, format!("v=DKIM1; k=rsa; p={}", p.trim()))
}

/// The zone for the inbound tests: sender.test (SPF 127.0.0.1 only, a DKIM key, DMARC
/// p=reject), spf.test (SPF 127.0.0.1 only, no DMARC), big.test (a 10,000-byte key record),
/// short.test (a 512-bit RSA key, which RFC 8301 says a verifier must not accept).
/// Returns the sender.test key and the short.test key.
fn inbound_zone(dir: &Path) -> (Dns, PathBuf, PathBuf) {
    let (key, key_txt) = keygen(dir, "sender.test", "s1", "rsa-sha256");
    let (short_key, short_txt) = short_rsa_key(dir);
    let big = format!("v=DKIM1; k=rsa; p={}", "A".repeat(10_000 - 18));
    assert_eq!(big.len(), 10_000);
    let dns = Dns::start_with(&[
        txt("s1._domainkey.sender.test", &key_txt),
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
        txt("spf.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("big._domainkey.big.test", &big),
        txt("short._domainkey.short.test", &short_txt),
    ]);
    (dns, key, short_key)
}

fn inbound_suite(dns_port: u16, extra: &[&str]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        ("dns", format!("nameservers = [\"127.0.0.1:{dns_port}\"]")),
        ("dns", "timeout = \"1s\"".into()),
        // Every test client is on loopback, which the suite trusts: check them all.
        ("inbound", "verify_trusted = true".into()),
    ];
    sections.extend(extra.iter().map(|l| ("inbound", l.to_string())));
    // Mail for other hosts stays queued: nothing listens there.
    sections.push(("outbound", "relay_host = \"127.0.0.1:9\"".into()));
    sections.push(("outbound", "retry = [\"1h\"]".into()));
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

/// The Authentication-Results header of the delivered message with `subject`.
fn delivered_results(suite: &Suite, subject: &str) -> String {
    let content = wait_for(
        &format!("{subject} in alice's mailbox"),
        Duration::from_secs(20),
        || {
            let dir = suite.mailbox("alice").join("new");
            for f in std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .flatten()
            {
                // Maildir files have LF line endings (the router converts CRLF).
                let c = std::fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .replace('\n', "\r\n");
                if c.contains(&format!("Subject: {subject}\r\n")) {
                    return Ok(c);
                }
            }
            Err(tail(&suite.log(), 10))
        },
    );
    let ours: Vec<&str> = content
        .split("\r\n")
        .filter(|l| l.starts_with("Authentication-Results: mta.test;"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one Authentication-Results of ours:\n{content}"
    );
    // The header with its folded continuation lines, unfolded.
    let start = content.find("Authentication-Results: mta.test;").unwrap();
    let mut header = String::new();
    for (i, line) in content[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        header.push_str(line.trim());
        header.push(' ');
    }
    header
}

#[test]
fn inbound_spf_dkim_dmarc_results_and_dmarc_reject() {
    let dir = tempfile::tempdir().unwrap();
    let (dns, key, short_key) = inbound_zone(dir.path());
    let suite = inbound_suite(dns.port, &["dmarc_reject = true"]);
    let port = suite.smtp_port;

    // Signed by dkimpy, from the SPF-listed address: everything passes, delivered.
    let plain = dir.path().join("plain.eml");
    let mut m = message("a@sender.test", "signed").to_vec();
    std::fs::write(&plain, &m).unwrap();
    let (ok, signed) = dkim_tool(&[
        "sign",
        key.to_str().unwrap(),
        "sender.test",
        "s1",
        plain.to_str().unwrap(),
    ]);
    assert!(ok, "{signed}");
    let reply = send_from(
        port,
        None,
        "client.sender.test",
        "a@sender.test",
        "alice@localhost",
        signed.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "signed");
    assert!(
        ar.contains("dkim=pass") && ar.contains("header.i=@sender.test"),
        "{ar}"
    );
    assert!(ar.contains("spf=pass") && ar.contains("dmarc=pass"), "{ar}");

    // Unsigned and from outside the SPF record, p=reject: refused at the end of DATA.
    m = message("a@sender.test", "forged");
    let reply = send_from(
        port,
        Some(Ipv4Addr::new(127, 0, 0, 2)),
        "client.test",
        "a@sender.test",
        "alice@localhost",
        &m,
    );
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    let log = suite.log();
    assert!(
        log.contains("reject: DATA: DMARC policy reject for header.from=sender.test"),
        "{}",
        tail(&log, 20)
    );

    // spf.test has no DMARC record: spf=fail is written down, the message delivered.
    m = message("b@spf.test", "spffail");
    let reply = send_from(
        port,
        Some(Ipv4Addr::new(127, 0, 0, 2)),
        "client.test",
        "b@spf.test",
        "alice@localhost",
        &m,
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "spffail");
    assert!(
        ar.contains("spf=fail") && ar.contains("smtp.mailfrom=b@spf.test"),
        "{ar}"
    );
    assert!(ar.contains("dkim=none"), "{ar}");

    // A forged Authentication-Results claiming our hostname is removed; others are kept.
    let forged = [
        b"Authentication-Results: mta.test; dkim=pass header.d=forged.example\r\n".as_slice(),
        b"Authentication-Results: elsewhere.test; spf=pass\r\n",
        &message("b@spf.test", "forgedar"),
    ]
    .concat();
    let reply = send_from(
        port,
        None,
        "client.test",
        "b@spf.test",
        "alice@localhost",
        &forged,
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "forgedar");
    assert!(!ar.contains("forged.example"), "{ar}");
    assert!(ar.contains("spf=pass"), "{ar}");
    assert!(suite
        .log()
        .contains("removed Authentication-Results claiming mta.test"));

    // Bad input: a malformed signature and a 10,000-byte key record give results, no crash.
    let malformed = [
        b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=s1; b=!!!; bh=???\r\n".as_slice(),
        &message("b@spf.test", "malformed"),
    ]
    .concat();
    let reply = send_from(
        port,
        None,
        "client.test",
        "b@spf.test",
        "alice@localhost",
        &malformed,
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "malformed");
    assert!(
        ar.contains("dkim=neutral") || ar.contains("dkim=permerror") || ar.contains("dkim=fail"),
        "{ar}"
    );

    let big = dir.path().join("big.eml");
    std::fs::write(&big, message("b@big.test", "bigtxt")).unwrap();
    let (ok, big_signed) = dkim_tool(&[
        "sign",
        key.to_str().unwrap(),
        "big.test",
        "big",
        big.to_str().unwrap(),
    ]);
    assert!(ok, "{big_signed}");
    let reply = send_from(
        port,
        None,
        "client.test",
        "b@big.test",
        "alice@localhost",
        big_signed.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "bigtxt");
    assert!(
        ar.contains("dkim=permerror") || ar.contains("dkim=fail") || ar.contains("dkim=neutral"),
        "{ar}"
    );

    // A valid signature made with a 512-bit RSA key, whose record is in DNS: not a pass
    // (RFC 8301 3.2), and the message is delivered with that result.
    let short = dir.path().join("short.eml");
    std::fs::write(&short, message("b@short.test", "shortkey")).unwrap();
    let (ok, short_signed) = dkim_tool(&[
        "sign",
        short_key.to_str().unwrap(),
        "short.test",
        "short",
        short.to_str().unwrap(),
    ]);
    assert!(ok, "{short_signed}");
    let reply = send_from(
        port,
        None,
        "client.test",
        "b@short.test",
        "alice@localhost",
        short_signed.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "shortkey");
    assert!(!ar.contains("dkim=pass"), "{ar}");
    assert!(
        ar.contains("dkim=fail") || ar.contains("dkim=permerror") || ar.contains("dkim=policy"),
        "{ar}"
    );

    // `show message` shows the results of a message still queued (its relay host is down).
    let reply = send_from(
        port,
        None,
        "client.sender.test",
        "a@sender.test",
        "x@remote.test",
        signed.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let qid = reply.split_whitespace().last().unwrap().to_string();
    let shown = wait_for("show message with results", Duration::from_secs(20), || {
        let out = suite.mtacon(&["show", "message", &qid]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("Auth-Results: mta.test;") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(
        shown.contains("dkim=pass") && shown.contains("dmarc=pass"),
        "{shown}"
    );
    assert_eq!(stat(&suite, "Mail.DKIM.Verified.Pass"), 2);
    assert_eq!(stat(&suite, "Mail.DMARC.Rejected"), 1);
    assert!(stat(&suite, "Mail.DKIM.Verified.None") >= 2);
    assert!(stat(&suite, "Mail.DKIM.Verified.Fail") >= 2);
}

#[test]
fn dns_timeouts_give_temperror_never_a_rejection() {
    // A DNS server that takes every query and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let suite = inbound_suite(port, &["dmarc_reject = true"]);
    let reply = send_from(
        suite.smtp_port,
        Some(Ipv4Addr::new(127, 0, 0, 2)),
        "client.sender.test",
        "a@sender.test",
        "alice@localhost",
        &message("a@sender.test", "timeout"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let ar = delivered_results(&suite, "timeout");
    assert!(ar.contains("spf=temperror"), "{ar}");
    assert!(
        ar.contains("dmarc=temperror") || ar.contains("dmarc=none"),
        "{ar}"
    );
    drop(silent);
}
