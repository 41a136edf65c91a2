//! TLS and authenticated submission (issue 11), through the real binaries and real
//! clients: swaks (-tls, --tlsc, -a PLAIN / LOGIN), Python smtplib (starttls, login,
//! SMTP_SSL) and `openssl s_client -starttls smtp`.

use mta_testkit::{bin, wait_for, RawSmtp, Suite, SuiteOptions};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const ALICE_PASSWORD: &str = "correct horse battery staple";

fn swaks(port: u16, args: &[&str]) -> std::process::Output {
    Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "20"])
        .args(args)
        .output()
        .expect("swaks is installed (scripts/test installs it)")
}

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new(mta_testkit::python3())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `smtpmta hash-password` with `password` on stdin.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(bin("smtpmta"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("smtpmta");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    phc
}

/// alice has a password; bob has none; team@ reaches alice and bob.
fn directory() -> String {
    format!(
        r#"
[[user]]
name = "postmaster"
addresses = ["postmaster@localhost"]
maildir = "mail/postmaster"

[[user]]
name = "alice"
addresses = ["alice@localhost"]
maildir = "mail/alice"
password = "{}"

[[user]]
name = "bob"
addresses = ["bob@localhost"]
maildir = "mail/bob"

[aliases]
"team@localhost" = ["alice@localhost", "bob@localhost"]
"#,
        hash_password(ALICE_PASSWORD)
    )
}

fn suite_with(sections: Vec<(&'static str, String)>) -> Suite {
    Suite::start(&SuiteOptions {
        directory: Some(directory()),
        sections,
        ..SuiteOptions::default()
    })
}

fn suite() -> Suite {
    suite_with(Vec::new())
}

fn one_message(suite: &Suite, user: &str) -> String {
    let files = suite.wait_for_mail(user, 1);
    std::fs::read_to_string(&files[0]).unwrap()
}

#[test]
fn swaks_starttls_on_listen() {
    let suite = suite();
    let out = swaks(
        suite.smtp_port,
        &["-tls", "--to", "bob@localhost", "--from", "x@example.org"],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("STARTTLS") && t.contains("TLS started"), "{t}");
    let msg = one_message(&suite, "bob");
    assert!(msg.contains("with ESMTPS id"), "{msg}");
    assert!(msg.contains("(using TLSv1.3 with cipher"), "{msg}");
    assert!(suite.log().contains("TLS established: TLSv1.3 with cipher"));
}

#[test]
fn swaks_implicit_tls_and_auth_on_submissions() {
    let suite = suite();
    let out = swaks(
        suite.submissions_port,
        &[
            "--tlsc",
            "-a",
            "PLAIN",
            "-au",
            "alice",
            "-ap",
            ALICE_PASSWORD,
            "--from",
            "alice@localhost",
            "--to",
            "bob@localhost",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("235 2.7.0 Authentication successful"), "{t}");
    let msg = one_message(&suite, "bob");
    assert!(msg.contains("with ESMTPSA id"), "{msg}");
    let log = suite.log();
    assert!(log.contains("sasl_username=alice"), "{log}");
}

#[test]
fn swaks_auth_plain_and_login_on_submission() {
    let suite = suite();
    for mechanism in ["PLAIN", "LOGIN"] {
        let out = swaks(
            suite.submission_port,
            &[
                "-tls",
                "-a",
                mechanism,
                "-au",
                "alice",
                "-ap",
                ALICE_PASSWORD,
                "--from",
                "alice@localhost",
                "--to",
                "bob@localhost",
            ],
        );
        let t = text(&out);
        assert!(out.status.success(), "{mechanism}: {t}");
        assert!(t.contains("235 2.7.0"), "{mechanism}: {t}");
    }
    let files = suite.wait_for_mail("bob", 2);
    for f in files {
        let msg = std::fs::read_to_string(f).unwrap();
        assert!(msg.contains("with ESMTPSA id"), "{msg}");
    }
}

const SMTPLIB_SUBMIT: &str = r#"
import smtplib, ssl, sys
port, user, password, sender, rcpt = sys.argv[1:6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(port), timeout=20)
s.ehlo("client.test")
assert not s.has_extn("auth"), "AUTH offered before TLS"
s.starttls(context=ctx)
s.ehlo("client.test")
assert "PLAIN" in s.esmtp_features["auth"], s.esmtp_features
s.login(user, password)
s.sendmail(sender, [rcpt], b"Subject: via smtplib\r\n\r\nbody over TLS\r\n")
s.quit()
print("sent")
"#;

#[test]
fn python_smtplib_starttls_then_login() {
    let suite = suite();
    let port = suite.submission_port.to_string();
    let out = python(
        SMTPLIB_SUBMIT,
        &[
            &port,
            "alice",
            ALICE_PASSWORD,
            "alice@localhost",
            "bob@localhost",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let msg = one_message(&suite, "bob");
    assert!(
        msg.contains("body over TLS") && msg.contains("with ESMTPSA"),
        "{msg}"
    );
}

#[test]
fn openssl_s_client_shows_the_certificate() {
    let suite = suite();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{}", suite.smtp_port),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let t = text(&out);
    assert!(t.contains("BEGIN CERTIFICATE"), "{t}");
    assert!(
        t.contains("CN = mta.test") || t.contains("CN=mta.test"),
        "{t}"
    );
    assert!(t.contains("TLSv1.3"), "{t}");
    // The self-signed certificate lives under data_dir/tls.
    assert!(suite.data_dir().join("tls/selfsigned-cert.pem").exists());
}

/// CVE-2011-0411: a command pipelined with STARTTLS must not be executed inside TLS.
const INJECTION: &str = r#"
import socket, ssl, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=20)
f = s.makefile("rb")
def reply(f):
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.strip())
        if len(line) < 4 or line[3] == " ":
            return lines
reply(f)
s.sendall(b"EHLO attacker.test\r\n"); reply(f)
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
assert reply(f)[0].startswith("220"), "no 220"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="mta.test")
tf = t.makefile("rb")
t.sendall(b"MAIL FROM:<after@example.org>\r\n")
first = reply(tf)
print("FIRST", first[0])
t.sendall(b"EHLO attacker.test\r\n")
ehlo = reply(tf)
print("EHLO", ehlo[0])
print("STARTTLS-AGAIN", "STARTTLS" in " ".join(ehlo))
t.sendall(b"QUIT\r\n"); reply(tf)
"#;

#[test]
fn starttls_injection_is_discarded_and_ehlo_required() {
    let suite = suite();
    let out = python(INJECTION, &[&suite.smtp_port.to_string()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // The first reply inside TLS answers OUR MAIL: 503 because the session started over
    // (no EHLO yet) — not a 250 for the injected MAIL.
    assert!(t.contains("FIRST 503 5.5.1"), "{t}");
    assert!(t.contains("EHLO 250"), "{t}");
    assert!(t.contains("STARTTLS-AGAIN False"), "{t}");
    assert!(suite.log().contains("pipelined after STARTTLS"));
}

#[test]
fn refusals_on_the_submission_listeners() {
    let suite = suite();
    // Submission before STARTTLS: AUTH 538, MAIL 530, and no AUTH in EHLO.
    let (mut c, _) = RawSmtp::connect(suite.submission_port);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHg=");
    assert!(r.starts_with("538 5.7.11"), "{r}");
    let r = c.cmd("MAIL FROM:<alice@localhost>");
    assert!(r.starts_with("530 5.7.0 Must issue a STARTTLS"), "{r}");
    // Plain port 25 style: AUTH is not offered without TLS.
    let (mut c, _) = RawSmtp::connect(suite.smtp_port);
    c.cmd("EHLO client.test");
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHg=");
    assert!(r.starts_with("503 5.5.1"), "{r}");
    // After TLS, MAIL without AUTH: 530 5.7.0 Authentication required.
    let out = python(
        r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
s.ehlo("client.test")
print(s.mail("alice@localhost"))
"#,
        &[&suite.submissions_port.to_string()],
    );
    let t = text(&out);
    assert!(
        t.contains("530") && t.contains("5.7.0 Authentication required"),
        "{t}"
    );
}

#[test]
fn sender_must_belong_to_the_authenticated_user() {
    let suite = suite();
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
s.login("alice", sys.argv[2])
for sender in ["bob@localhost", "team@localhost", "alice@localhost", ""]:
    print(sender or "<>", s.mail(sender))
    s.rset()
# Authenticated: relaying anywhere is allowed.
s.mail("alice@localhost")
print("remote", s.rcpt("someone@remote.example"))
"#;
    let out = python(
        script,
        &[&suite.submissions_port.to_string(), ALICE_PASSWORD],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("bob@localhost (553, b'5.7.1 <bob@localhost>: Sender address rejected: not owned by user alice')"),
        "{t}"
    );
    assert!(t.contains("team@localhost (250"), "{t}");
    assert!(t.contains("alice@localhost (250"), "{t}");
    assert!(t.contains("<> (250"), "{t}");
    assert!(t.contains("remote (250"), "{t}");
}

#[test]
fn auth_failures_lock_the_client_out() {
    let suite = suite_with(vec![("inbound", "max_auth_failures = 3".into())]);
    let script = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
s.ehlo("client.test")
import base64
def auth(user, pw):
    blob = base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
    return s.docmd("AUTH", "PLAIN " + blob)
print("unknown", auth("mallory", "x"))
print("wrong", auth("alice", "wrong"))
print("wrong", auth("alice", "wrong again"))
print("locked", auth("alice", sys.argv[2]))
"#;
    let out = python(
        script,
        &[&suite.submissions_port.to_string(), ALICE_PASSWORD],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let failed = "(535, b'5.7.8 Error: authentication failed')";
    assert!(t.contains(&format!("unknown {failed}")), "{t}");
    assert_eq!(t.matches(&format!("wrong {failed}")).count(), 2, "{t}");
    // Even the right password is refused while locked out.
    assert!(
        t.contains("locked (454, b'4.7.0 Too many authentication failures"),
        "{t}"
    );
    assert!(suite.log().contains("AUTH lockout"));
}

#[test]
fn a_bad_certificate_stops_the_start_with_key_and_file() {
    // A missing file: the config error names file, line, key and the missing path.
    let mut suite = Suite::prepare(&SuiteOptions {
        sections: vec![
            ("tls", "certificate = \"missing-cert.pem\"".into()),
            ("tls", "private_key = \"missing-key.pem\"".into()),
        ],
        ..SuiteOptions::default()
    });
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg(&suite.config)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("key `tls.certificate`") && t.contains("missing-cert.pem"),
        "{t}"
    );
    // A file that is not a certificate: the start fails naming the key and the file.
    std::fs::write(suite.dir.path().join("missing-cert.pem"), "garbage\n").unwrap();
    std::fs::write(suite.dir.path().join("missing-key.pem"), "garbage\n").unwrap();
    let out = Command::new(bin("smtpmta"))
        .arg("--config")
        .arg(&suite.config)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("tls.certificate") && t.contains("missing-cert.pem"),
        "{t}"
    );
    suite.stop();
}

fn make_cert(dir: &std::path::Path, name: &str) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .args(["-subj", &format!("/CN={name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn served_cn(port: u16) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    text(&out)
}

#[test]
fn refresh_reloads_the_certificate() {
    let mut suite = Suite::prepare(&SuiteOptions {
        sections: vec![
            ("tls", "certificate = \"cert.pem\"".into()),
            ("tls", "private_key = \"key.pem\"".into()),
        ],
        ..SuiteOptions::default()
    });
    make_cert(suite.dir.path(), "first.test");
    suite.launch();
    assert!(served_cn(suite.smtp_port).contains("CN = first.test"));
    make_cert(suite.dir.path(), "second.test");
    let out = suite.mtacon(&["tell", "smtpmta", "refresh"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(
        "the new certificate served",
        Duration::from_secs(10),
        || {
            let t = served_cn(suite.smtp_port);
            t.contains("CN = second.test").then_some(()).ok_or(t)
        },
    );
}

// ----- Outbound STARTTLS (to tests/support/smtp_sink.py, which can offer STARTTLS) -----

use mta_testkit::peers::Sink;

/// A self-signed certificate for the sink: `san` like `DNS:sink.test` or `IP:127.0.0.1`.
fn sink_cert(dir: &std::path::Path, san: &str) -> (String, String) {
    let (cert, key) = (dir.join("sink-cert.pem"), dir.join("sink-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            "/CN=sink.test",
            "-addext",
            &format!("subjectAltName={san}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

fn relay_suite(sink: &Sink, tls: &[String]) -> Suite {
    let mut sections: Vec<(&'static str, String)> = vec![
        (
            "outbound",
            format!("relay_host = \"127.0.0.1:{}\"", sink.port),
        ),
        ("outbound", "retry = [\"1s\"]".into()),
        ("outbound", "connect_timeout = \"2s\"".into()),
        ("outbound", "command_timeout = \"20s\"".into()),
    ];
    for line in tls {
        sections.push(("outbound.tls", line.clone()));
    }
    Suite::start(&SuiteOptions {
        sections,
        ..SuiteOptions::default()
    })
}

fn send_remote(suite: &Suite) {
    let out = swaks(
        suite.smtp_port,
        &["--to", "someone@remote.example", "--from", "x@example.org"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

fn wait_log(suite: &Suite, what: &str) {
    wait_for(what, Duration::from_secs(20), || {
        let log = suite.log();
        log.contains(what)
            .then_some(())
            .ok_or_else(|| mta_testkit::peers::tail(&log, 15))
    });
}

#[test]
fn outbound_may_uses_starttls_when_offered() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = sink_cert(certs.path(), "DNS:sink.test");
    let sink = Sink::start(&["--tls", &cert, &key]);
    let suite = relay_suite(&sink, &[]);
    send_remote(&suite);
    wait_for("the sink's message", Duration::from_secs(20), || {
        let msgs = sink.messages();
        (!msgs.is_empty())
            .then_some(())
            .ok_or("none yet".to_string())
    });
    let (env, _) = &sink.messages()[0];
    assert_eq!(env["tls"], "TLSv1.3", "{env}");
    wait_log(&suite, "TLS established: TLSv1.3 with cipher");
}

#[test]
fn outbound_may_falls_back_to_plaintext_when_the_handshake_fails() {
    let sink = Sink::start(&["--starttls-broken"]);
    let suite = relay_suite(&sink, &[]);
    // The sink closes the connection where the handshake should start; the retry on a
    // new connection skips STARTTLS, and the sink takes the message there, in plaintext.
    send_remote(&suite);
    wait_log(&suite, "retrying in plaintext (policy may)");
    wait_for("the plaintext delivery", Duration::from_secs(20), || {
        let msgs = sink.messages();
        (!msgs.is_empty())
            .then_some(())
            .ok_or_else(|| mta_testkit::peers::tail(&suite.log(), 15))
    });
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].0["tls"].is_null(), "{}", msgs[0].0);
    assert_eq!(
        msgs[0].0["rcpts"][0], "someone@remote.example",
        "{}",
        msgs[0].0
    );
    wait_log(&suite, "status=sent");
}

#[test]
fn outbound_encrypt_to_a_host_without_starttls_defers() {
    let sink = Sink::start(&[]);
    let suite = relay_suite(&sink, &["policy = \"encrypt\"".into()]);
    send_remote(&suite);
    wait_log(
        &suite,
        "TLS is required (policy encrypt), but was not offered by the host",
    );
    wait_log(&suite, "status=deferred");
    assert_eq!(sink.count(), 0);
}

#[test]
fn outbound_verify_checks_the_name() {
    // The sink's certificate is trusted (ca_file) but names another host: deferred.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = sink_cert(certs.path(), "DNS:wrong.test");
    let sink = Sink::start(&["--tls", &cert, &key]);
    let suite = relay_suite(
        &sink,
        &[
            "policy = \"verify\"".into(),
            format!("ca_file = \"{cert}\""),
        ],
    );
    send_remote(&suite);
    wait_log(&suite, "(policy verify)");
    wait_log(&suite, "status=deferred");
    assert!(
        suite.log().contains("not valid for name"),
        "{}",
        suite.log()
    );
    assert_eq!(sink.count(), 0);

    // The same CA with the right name (the relay host is 127.0.0.1): delivered over TLS.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = sink_cert(certs.path(), "IP:127.0.0.1");
    let sink = Sink::start(&["--tls", &cert, &key]);
    let suite = relay_suite(
        &sink,
        &[
            "policy = \"verify\"".into(),
            format!("ca_file = \"{cert}\""),
        ],
    );
    send_remote(&suite);
    wait_for("the verified delivery", Duration::from_secs(20), || {
        let msgs = sink.messages();
        (!msgs.is_empty())
            .then_some(())
            .ok_or_else(|| mta_testkit::peers::tail(&suite.log(), 15))
    });
    assert_eq!(sink.messages()[0].0["tls"], "TLSv1.3");
}

// ----- sendmail -----

fn sendmail(config: &std::path::Path, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(bin("sendmail"))
        .arg("-C")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sendmail");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sendmail_t_delivers_locally_and_relays() {
    let sink = Sink::start(&[]);
    let mut suite = relay_suite(&sink, &[]);
    // A script's message: LF line ends, Bcc to hide, a lone "." line kept with -oi.
    let input = "To: Bob <bob@localhost>\nBcc: someone@remote.example\nSubject: from cron\n\nline one\n.\nlast line\n";
    let out = sendmail(
        &suite.config,
        &["-t", "-oi", "-f", "cron@localhost", "-F", "Cron Daemon"],
        input,
    );
    assert!(out.status.success(), "{}", text(&out));
    // (The Maildir holds LF line ends, as Dovecot expects.)
    let msg = one_message(&suite, "bob").replace("\r\n", "\n");
    assert!(msg.contains("Subject: from cron\n"), "{msg}");
    assert!(msg.contains("line one\n.\nlast line\n"), "{msg}");
    assert!(
        msg.contains("From: \"Cron Daemon\" <cron@localhost>"),
        "{msg}"
    );
    assert!(!msg.contains("Bcc:"), "{msg}");
    sink.wait_count(&suite, 1, Duration::from_secs(20));
    let (env, content) = &sink.messages()[0];
    assert_eq!(env["rcpts"][0], "someone@remote.example");
    assert!(!String::from_utf8_lossy(content).contains("Bcc:"));

    // With the suite stopped: refused, exit 75, one clear line; nothing half-sent.
    suite.stop();
    let out = sendmail(&suite.config, &["bob@localhost"], "Subject: x\n\nbody\n");
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the mail suite is not running") && err.contains("NOT sent"),
        "{err}"
    );
}

/// Issue 11: the authenticated identity is logged with the queue ID at acceptance, kept in
/// the record and shown by `show message` (text and `--json`).
#[test]
fn show_message_shows_the_authenticated_user() {
    // The relay host is down, so the message stays queued to be looked at.
    let suite = suite_with(vec![
        ("outbound", "relay_host = \"127.0.0.1:9\"".into()),
        ("outbound", "retry = [\"1h\"]".into()),
    ]);
    let out = swaks(
        suite.submission_port,
        &[
            "-tls",
            "-a",
            "PLAIN",
            "-au",
            "alice",
            "-ap",
            ALICE_PASSWORD,
            "--from",
            "alice@localhost",
            "--to",
            "someone@remote.example",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let qid = t
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .map(|q| q.trim().to_string())
        .unwrap_or_else(|| panic!("no queue ID in {t}"));
    let shown = wait_for("show message", Duration::from_secs(20), || {
        let out = suite.mtacon(&["show", "message", &qid]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("Queue ID:") {
            Ok(text)
        } else {
            Err(text)
        }
    });
    assert!(shown.contains("Auth-User:    alice"), "{shown}");
    let out = suite.mtacon(&["show", "message", &qid, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["message"]["envelope"]["auth"], "alice", "{v}");
    // A client that did not authenticate has none.
    let plain = swaks(
        suite.smtp_port,
        &["--to", "someone@remote.example", "--from", "x@example.org"],
    );
    let t = text(&plain);
    let qid = t
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .map(|q| q.trim().to_string())
        .unwrap_or_else(|| panic!("no queue ID in {t}"));
    let out = suite.mtacon(&["show", "message", &qid, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["message"]["envelope"]["auth"].is_null(), "{v}");
}
