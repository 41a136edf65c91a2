//! Sessions driven through an in-memory stream: a [`TestSession`] speaks the client's side
//! of a transcript against [`run_session`] with recording hooks.

use super::*;
use crate::reply::read_reply;
use tokio::io::{AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

/// Hooks that accept everyone except `unknown@…` and `…@remote.example`, and record what
/// was delivered.
#[derive(Default)]
struct FakeHooks {
    delivered: Vec<(QueueId, Transaction, Vec<u8>)>,
    transcript: Vec<(Direction, Vec<u8>)>,
    bare: Vec<BareLineEvent>,
    /// The door's answers: a refusal for every command, and pipelining refused.
    door: DoorHooks,
}

#[derive(Clone, Default)]
struct DoorHooks {
    refuse_all: Option<Reply>,
    strict_pipelining: bool,
    /// Recipients accepted before a `421` (a per-client limit).
    rcpt_limit: Option<usize>,
}

impl SessionHooks for FakeHooks {
    async fn check_rcpt(&mut self, _env: &Transaction, rcpt: &Address) -> RcptVerdict {
        if let Some(n) = &mut self.door.rcpt_limit {
            if *n == 0 {
                return RcptVerdict::Reject(Reply::client_limit("mx.example", "too many"));
            }
            *n -= 1;
        }
        if rcpt.local_part() == "unknown" {
            RcptVerdict::Reject(Reply::mailbox_unknown(rcpt))
        } else if rcpt.domain().as_str() == "remote.example" {
            RcptVerdict::Reject(Reply::relay_denied(rcpt))
        } else {
            RcptVerdict::Accept
        }
    }

    async fn deliver(&mut self, qid: QueueId, env: &Transaction, content: Vec<u8>) -> Reply {
        if content.windows(9).any(|w| w == b"FAILSTORE") {
            return Reply::storage_full();
        }
        self.delivered.push((qid, env.clone(), content));
        Reply::queued(qid)
    }

    fn transcript(&mut self, _qid: Option<QueueId>, dir: Direction, line: &[u8]) {
        self.transcript.push((dir, line.to_vec()));
    }

    fn bare_line_ending(&mut self, _env: &Transaction, event: BareLineEvent) {
        self.bare.push(event);
    }

    async fn first_command(&mut self) -> Option<Reply> {
        self.door.refuse_all.clone()
    }

    fn early_pipelining(&mut self, _command: &str, _octets: usize) -> Option<Reply> {
        self.door.strict_pipelining.then(Reply::pipelining_refused)
    }
}

fn test_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.example".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_line_length: 200,
        command_timeout: Duration::from_secs(60),
        data_timeout: Duration::from_secs(120),
        session_timeout: Duration::from_secs(600),
        max_errors: 5,
        bare_newline: crate::data::BareNewline::Reject,
        mode: ListenerMode::Relay,
    }
}

struct TestSession {
    client: BufReader<DuplexStream>,
    server: JoinHandle<(SessionSummary, FakeHooks)>,
}

impl TestSession {
    /// Starts a session and checks the greeting.
    async fn start(cfg: SessionConfig) -> TestSession {
        TestSession::start_with(cfg, DoorHooks::default()).await
    }

    async fn start_with(cfg: SessionConfig, door: DoorHooks) -> TestSession {
        let (client, server) = tokio::io::duplex(1 << 16);
        let info = ClientInfo {
            peer: "192.0.2.7:40000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
        };
        let server = tokio::spawn(async move {
            let mut hooks = FakeHooks {
                door,
                ..FakeHooks::default()
            };
            let summary = run_session(server, info, &cfg, &mut hooks).await;
            (summary, hooks)
        });
        let mut t = TestSession {
            client: BufReader::new(client),
            server,
        };
        t.expect(220).await;
        t
    }

    async fn send(&mut self, text: &[u8]) {
        self.client.get_mut().write_all(text).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        read_reply(&mut self.client).await.unwrap()
    }

    async fn expect(&mut self, code: u16) -> Reply {
        let r = self.reply().await;
        assert_eq!(r.code, Some(code), "got {r:?}");
        r
    }

    /// Sends one command line and checks the reply code.
    async fn cmd(&mut self, line: &str, code: u16) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(code).await
    }

    async fn ehlo(&mut self) {
        let r = self.cmd("EHLO client.example", 250).await;
        assert!(r.lines.len() > 1);
    }

    /// A session greeted, with `MAIL FROM:<a@b.example>` and `RCPT TO:<u@mx.example>`
    /// accepted: ready for DATA or BDAT.
    async fn with_envelope(cfg: SessionConfig) -> TestSession {
        let mut t = TestSession::start(cfg).await;
        t.ehlo().await;
        t.envelope().await;
        t
    }

    /// `MAIL FROM:<a@b.example>` and `RCPT TO:<u@mx.example>`, both accepted.
    async fn envelope(&mut self) {
        self.cmd("MAIL FROM:<a@b.example>", 250).await;
        self.cmd("RCPT TO:<u@mx.example>", 250).await;
    }

    /// QUIT; then the server's side ends with its summary and hooks.
    async fn quit(mut self) -> (SessionSummary, FakeHooks) {
        self.cmd("QUIT", 221).await;
        self.finish().await
    }

    /// QUIT, after a session that delivered nothing and refused `rejected` messages.
    async fn quit_with_nothing_delivered(self, rejected: u32) {
        let (summary, hooks) = self.quit().await;
        assert!(hooks.delivered.is_empty());
        assert_eq!(summary.rejected, rejected);
    }

    /// The server's side ends; returns its summary and hooks.
    async fn finish(self) -> (SessionSummary, FakeHooks) {
        self.server.await.unwrap()
    }
}

#[tokio::test]
async fn happy_path() {
    let mut t = TestSession::start(test_config()).await;
    let r = t.cmd("EHLO client.example", 250).await;
    assert_eq!(
        r.lines,
        vec![
            "mx.example Hello client.example",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "DSN",
            "CHUNKING"
        ]
    );
    assert_eq!(
        t.cmd("MAIL FROM:<sender@client.example> BODY=8BITMIME", 250)
            .await
            .status,
        Some(mta_types::Enhanced::new(2, 1, 0))
    );
    assert_eq!(
        t.cmd("RCPT TO:<user@mx.example> NOTIFY=FAILURE", 250)
            .await
            .status,
        Some(mta_types::Enhanced::new(2, 1, 5))
    );
    t.cmd("DATA", 354).await;
    t.send(b"Subject: test\r\n\r\n..dot\r\nbody\r\n.\r\n").await;
    let r = t.expect(250).await;
    assert!(r.lines[0].starts_with("Ok: queued as "));
    let (summary, hooks) = t.quit().await;
    assert_eq!(
        summary,
        SessionSummary {
            accepted: 1,
            rejected: 0,
            errors: 0,
            end: EndReason::Quit
        }
    );
    let (qid, env, content) = &hooks.delivered[0];
    assert_eq!(r.lines[0], format!("Ok: queued as {qid}"));
    assert_eq!(
        env.envelope.mail_from.as_ref().unwrap().to_string(),
        "sender@client.example"
    );
    assert_eq!(env.rcpts.len(), 1);
    assert_eq!(env.envelope.protocol, "ESMTP");
    assert!(env.envelope.eight_bit);
    let text = String::from_utf8(content.clone()).unwrap();
    assert!(text.starts_with("Received: from client.example (unknown [192.0.2.7])\r\n\tby mx.example (smtpmta) with ESMTP id "));
    assert!(text.contains("\tfor <user@mx.example>; "));
    assert!(text.ends_with("\r\nSubject: test\r\n\r\n.dot\r\nbody\r\n"));
    assert!(hooks
        .transcript
        .iter()
        .any(|(d, l)| *d == Direction::In && l == b"QUIT\r\n"));
    assert!(hooks
        .transcript
        .iter()
        .any(|(d, l)| *d == Direction::Out && l == b"221 2.0.0 Bye\r\n"));
}

#[tokio::test]
async fn pipelined_group_gets_all_replies() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    t.send(b"MAIL FROM:<>\r\nRCPT TO:<a@mx.example>\r\nRCPT TO:<unknown@mx.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n").await;
    t.expect(250).await;
    t.expect(250).await;
    let r = t.expect(550).await;
    assert_eq!(
        r.wire(),
        "550 5.1.1 <unknown@mx.example>: Recipient address rejected: User unknown\r\n"
    );
    t.expect(250).await;
    t.expect(354).await;
    t.send(b"hello\r\n.\r\nMAIL FROM:<x@y.example>\r\nRSET\r\nQUIT\r\n")
        .await;
    t.expect(250).await;
    t.expect(250).await;
    t.expect(250).await;
    t.expect(221).await;
    let (summary, hooks) = t.finish().await;
    assert_eq!(summary.accepted, 1);
    let (_, env, content) = &hooks.delivered[0];
    assert_eq!(env.envelope.mail_from, None);
    assert_eq!(env.rcpts.len(), 2);
    // Two recipients: no `for` clause.
    assert!(!String::from_utf8_lossy(content).contains("for <"));
}

/// A session that drops the client only after 20 errors (the tests make many on purpose).
fn tolerant() -> SessionConfig {
    SessionConfig {
        max_errors: 20,
        ..test_config()
    }
}

#[tokio::test]
async fn sequence_errors() {
    let mut t = TestSession::start(tolerant()).await;
    let r = t.cmd("MAIL FROM:<a@b.example>", 503).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(5, 5, 1)));
    t.cmd("NOOP", 250).await;
    t.ehlo().await;
    t.cmd("RCPT TO:<a@mx.example>", 503).await;
    t.cmd("DATA", 503).await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    t.cmd("MAIL FROM:<a@b.example>", 503).await;
    t.cmd("DATA", 554).await;
    t.cmd("RSET", 250).await;
    t.cmd("RCPT TO:<a@mx.example>", 503).await;
    let (summary, _) = t.quit().await;
    assert_eq!(summary.errors, 6);
}

#[tokio::test]
async fn replies_to_misc_commands() {
    let mut t = TestSession::start(tolerant()).await;
    t.cmd("HELO client.example", 250).await;
    t.cmd("MAIL FROM:<a@b.example> SIZE=10", 555).await;
    t.cmd("VRFY root", 252).await;
    t.cmd("EXPN staff", 502).await;
    t.cmd("STARTTLS", 502).await;
    t.cmd("HELP", 214).await;
    t.cmd("FOO bar", 500).await;
    t.cmd("MAIL FROM:<@a,@b:u@c.example>", 553).await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    t.cmd("RCPT TO:<x@remote.example>", 554).await;
    t.cmd("RCPT TO:<Postmaster>", 250).await;
    t.cmd("DATA", 354).await;
    t.send(b"hi\r\n.\r\n").await;
    t.expect(250).await;
    let (_, hooks) = t.quit().await;
    let (_, env, _) = &hooks.delivered[0];
    assert_eq!(env.rcpts[0].0.to_string(), "postmaster@mx.example");
    assert_eq!(env.envelope.protocol, "SMTP");
}

#[tokio::test]
async fn utf8_transaction() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    t.cmd("RCPT TO:<a@mx.example>", 503).await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    t.cmd("RCPT TO:<用户@mx.example>", 553).await;
    t.cmd("RSET", 250).await;
    t.cmd("MAIL FROM:<发件人@b.example> SMTPUTF8", 250).await;
    t.cmd("RCPT TO:<用户@mx.example>", 250).await;
    t.cmd("DATA", 354).await;
    t.send("Subject: 你好\r\n\r\nx\r\n.\r\n".as_bytes()).await;
    t.expect(250).await;
    let (_, hooks) = t.quit().await;
    let (_, env, content) = &hooks.delivered[0];
    assert!(env.envelope.utf8);
    assert_eq!(env.envelope.protocol, "UTF8SMTP");
    assert!(String::from_utf8_lossy(content).contains("with UTF8SMTP id"));
}

#[tokio::test]
async fn too_many_recipients() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    for i in 0..3 {
        t.cmd(&format!("RCPT TO:<u{i}@mx.example>"), 250).await;
    }
    let r = t.cmd("RCPT TO:<u9@mx.example>", 452).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(4, 5, 3)));
    t.cmd("DATA", 354).await;
    t.send(b"x\r\n.\r\n").await;
    t.expect(250).await;
    drop(t.client);
    let (summary, hooks) = t.server.await.unwrap();
    assert_eq!(summary.end, EndReason::ClientClosed);
    assert_eq!(hooks.delivered[0].1.rcpts.len(), 3);
}

#[tokio::test]
async fn size_limits_at_mail_and_in_data() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    let r = t.cmd("MAIL FROM:<a@b.example> SIZE=1001", 552).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(5, 3, 4)));
    t.cmd("MAIL FROM:<a@b.example> SIZE=1000", 250).await;
    t.cmd("RCPT TO:<u@mx.example>", 250).await;
    t.cmd("DATA", 354).await;
    let line = format!("{}\r\n", "x".repeat(98));
    t.send(line.repeat(20).as_bytes()).await;
    t.send(b".\r\n").await;
    assert_eq!(t.expect(552).await, Reply::message_too_big());
    // The transaction is over; the session is not.
    t.cmd("RCPT TO:<u@mx.example>", 503).await;
    t.envelope().await;
    t.cmd("DATA", 354).await;
    t.send(format!("{}\r\n.\r\n", "y".repeat(201)).as_bytes())
        .await;
    assert_eq!(t.expect(552).await, Reply::line_too_long_in_data());
    t.quit_with_nothing_delivered(2).await;
}

#[tokio::test]
async fn smuggling_is_one_rejected_message_and_next_command_is_read() {
    let mut t = TestSession::with_envelope(test_config()).await;
    t.cmd("DATA", 354).await;
    t.send(b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@mx.example>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n").await;
    assert_eq!(t.expect(554).await, Reply::bare_lf_rejected());
    t.expect(250).await; // the NOOP
    let (summary, hooks) = t.quit().await;
    assert!(hooks.delivered.is_empty());
    assert_eq!((summary.accepted, summary.rejected), (0, 1));
}

#[tokio::test]
async fn smuggling_under_normalize_is_one_message_with_crlf_only() {
    let cfg = SessionConfig {
        bare_newline: crate::data::BareNewline::Normalize,
        ..test_config()
    };
    let mut t = TestSession::with_envelope(cfg).await;
    t.cmd("DATA", 354).await;
    t.send(b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@mx.example>\r\nDATA\r\nforged\r\n.\r\nNOOP\r\n").await;
    t.expect(250).await; // the one message
    t.expect(250).await; // the NOOP

    // A bare CR is still refused.
    t.envelope().await;
    t.cmd("DATA", 354).await;
    t.send(b"x\r.\r\n.\r\n").await;
    assert_eq!(t.expect(554).await, Reply::bare_lf_rejected());
    let (summary, hooks) = t.quit().await;
    assert_eq!((summary.accepted, summary.rejected), (1, 1));
    let (qid, _, content) = &hooks.delivered[0];
    assert!(content.ends_with(
        b"body\r\n\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@mx.example>\r\nDATA\r\nforged\r\n"
    ));
    assert!(!crate::has_bare_line_ending(content));
    assert_eq!(
        hooks.bare,
        vec![
            BareLineEvent::Normalized {
                qid: *qid,
                lines: 2
            },
            BareLineEvent::Refused
        ]
    );
}

#[tokio::test]
async fn failed_delivery_is_reported() {
    let mut t = TestSession::with_envelope(test_config()).await;
    t.cmd("DATA", 354).await;
    t.send(b"FAILSTORE\r\n.\r\n").await;
    assert_eq!(t.expect(452).await, Reply::storage_full());
    t.cmd("QUIT", 221).await;
    assert_eq!(t.finish().await.0.rejected, 1);
}

#[tokio::test]
async fn bdat_happy_path_and_last() {
    let mut t = TestSession::with_envelope(test_config()).await;
    // The first chunk ends between CR and LF; the chunk holds a line that would end DATA.
    t.send(b"BDAT 13\r\nSubject: x\r\n\r").await;
    assert_eq!(t.expect(250).await, Reply::chunk_ok(13));
    t.send(b"BDAT 8 LAST\r\n\n.\r\nbody").await;
    let r = t.expect(250).await;
    assert!(r.lines[0].starts_with("Ok: queued as"));
    // Pipelined: a whole transaction in one write.
    t.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<v@mx.example>\r\nBDAT 5 LAST\r\nabc\r\nNOOP\r\n")
        .await;
    for _ in 0..4 {
        t.expect(250).await;
    }
    let (summary, hooks) = t.quit().await;
    assert_eq!(summary.accepted, 2);
    assert!(hooks.delivered[0]
        .2
        .ends_with(b"\r\nSubject: x\r\n\r\n.\r\nbody\r\n"));
    assert!(hooks.delivered[1].2.ends_with(b"\r\nabc\r\n"));
}

#[tokio::test]
async fn bdat_errors_keep_sync() {
    let mut t = TestSession::start(test_config()).await;
    // Before EHLO: the chunk is drained, then 503.
    t.send(b"BDAT 6\r\nNOOP\r\n").await;
    t.expect(503).await;
    t.ehlo().await;
    t.send(b"BDAT 4 LAST\r\nQUIT").await;
    t.expect(503).await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    t.send(b"BDAT 4 LAST\r\nQUIT").await;
    t.expect(554).await;
    t.cmd("RCPT TO:<u@mx.example>", 250).await;
    // Too big: every chunk after the limit is drained and answered 552.
    let chunk = "z".repeat(600);
    t.send(format!("BDAT 600\r\n{chunk}BDAT 600\r\n{chunk}BDAT 600 LAST\r\n{chunk}").as_bytes())
        .await;
    t.expect(250).await;
    t.expect(552).await;
    t.expect(552).await;
    t.envelope().await;
    // Bare LF in chunks.
    t.send(b"BDAT 3\r\na\nbBDAT 0 LAST\r\n").await;
    t.expect(250).await;
    assert_eq!(t.expect(554).await, Reply::bare_lf_rejected());
    t.quit_with_nothing_delivered(2).await;
}

#[tokio::test]
async fn rset_abandons_chunks_and_data_after_bdat_is_refused() {
    let mut t = TestSession::with_envelope(test_config()).await;
    t.send(b"BDAT 3\r\nabc").await;
    t.expect(250).await;
    t.cmd("DATA", 503).await;
    t.cmd("MAIL FROM:<a@b.example>", 503).await;
    t.cmd("RSET", 250).await;
    t.envelope().await;
    t.send(b"BDAT 5 LAST\r\nxyz\r\n").await;
    t.expect(250).await;
    let (_, hooks) = t.quit().await;
    assert_eq!(hooks.delivered.len(), 1);
    assert!(!hooks.delivered[0].2.windows(3).any(|w| w == b"abc"));
    assert!(hooks.delivered[0].2.ends_with(b"\r\nxyz\r\n"));
}

#[tokio::test]
async fn bdat_garbage_size_closes() {
    let mut t = TestSession::with_envelope(test_config()).await;
    t.cmd("BDAT many", 501).await;
    let r = t.expect(421).await;
    assert_eq!(r, Reply::lost_sync("mx.example"));
    let (summary, _) = t.finish().await;
    assert_eq!(summary.end, EndReason::LostSync);
}

#[tokio::test]
async fn too_many_errors_disconnects() {
    let mut t = TestSession::start(test_config()).await;
    for _ in 0..4 {
        t.cmd("BOGUS", 500).await;
    }
    t.cmd("MAIL FROM:<a@b.example>", 503).await;
    let r = t.expect(421).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(4, 7, 0)));
    let (summary, _) = t.finish().await;
    assert_eq!(summary.end, EndReason::TooManyErrors);
    assert_eq!(summary.errors, 5);
}

#[tokio::test]
async fn overlong_and_junk_command_lines() {
    let mut t = TestSession::start(test_config()).await;
    t.send(format!("NOOP {}\r\n", "x".repeat(5000)).as_bytes())
        .await;
    assert_eq!(t.expect(500).await, Reply::line_too_long());
    t.send(b"NOOP\0\r\n").await;
    t.expect(500).await;
    t.cmd("NOOP", 250).await;
    t.cmd("QUIT", 221).await;
}

#[tokio::test(start_paused = true)]
async fn command_timeout() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    let before = Instant::now();
    let r = t.expect(421).await;
    assert_eq!(r, Reply::timeout("mx.example"));
    assert_eq!(r.wire(), "421 4.4.2 mx.example Error: timeout exceeded\r\n");
    assert!(Instant::now() - before >= Duration::from_secs(60));
    let (summary, _) = t.finish().await;
    assert_eq!(summary.end, EndReason::Timeout);
}

#[tokio::test(start_paused = true)]
async fn data_timeout_is_longer_than_command_timeout() {
    let mut t = TestSession::with_envelope(test_config()).await;
    t.cmd("DATA", 354).await;
    t.send(b"partial line").await;
    let before = Instant::now();
    t.expect(421).await;
    assert_eq!(Instant::now() - before, Duration::from_secs(120));
    assert!(t.finish().await.1.delivered.is_empty());
}

#[tokio::test(start_paused = true)]
async fn session_timeout_ends_a_busy_session() {
    let mut t = TestSession::start(test_config()).await;
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(50)).await;
        // Once the server has gone the write may fail; its 421 is still buffered.
        let _ = t.client.get_mut().write_all(b"NOOP\r\n").await;
        let r = t.reply().await;
        if r.code == Some(421) {
            break;
        }
        assert_eq!(r.code, Some(250));
    }
    assert!(Instant::now() - start >= Duration::from_secs(600));
    assert!(Instant::now() - start < Duration::from_secs(700));
    assert_eq!(t.finish().await.0.end, EndReason::Timeout);
}

#[tokio::test]
async fn session_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (_a, b) = tokio::io::duplex(64);
    let info = ClientInfo {
        peer: "127.0.0.1:1".parse().unwrap(),
        local: "127.0.0.1:25".parse().unwrap(),
    };
    let cfg = test_config();
    let mut hooks = FakeHooks::default();
    let fut = run_session(b, info, &cfg, &mut hooks);
    assert_send(&fut);
}

/// The door's hooks for a client on a DNS blocklist: every command is refused.
fn blocklisted() -> DoorHooks {
    DoorHooks {
        refuse_all: Some(Reply::dnsbl_blocked(
            "192.0.2.7".parse().unwrap(),
            "bl.example",
        )),
        ..DoorHooks::default()
    }
}

#[tokio::test]
async fn a_refused_client_gets_the_refusal_to_every_command_but_quit() {
    let mut t = TestSession::start_with(test_config(), blocklisted()).await;
    let r = t.cmd("EHLO client.example", 554).await;
    assert_eq!(
        r.wire(),
        "554 5.7.1 Service unavailable; client [192.0.2.7] blocked using bl.example\r\n"
    );
    t.cmd("MAIL FROM:<a@client.example>", 554).await;
    t.cmd("NOOP", 554).await;
    let (summary, hooks) = t.quit().await;
    assert_eq!(summary.end, EndReason::Quit);
    assert!(hooks.delivered.is_empty());
}

#[tokio::test]
async fn a_refused_client_is_dropped_after_max_errors() {
    let mut t = TestSession::start_with(test_config(), blocklisted()).await;
    for _ in 0..4 {
        t.cmd("HELO client.example", 554).await;
    }
    t.send(b"HELO client.example\r\n").await;
    t.expect(554).await;
    t.expect(421).await;
    assert_eq!(t.finish().await.0.end, EndReason::TooManyErrors);
}

#[tokio::test]
async fn a_421_to_rcpt_ends_the_session() {
    let door = DoorHooks {
        rcpt_limit: Some(1),
        ..DoorHooks::default()
    };
    let mut t = TestSession::start_with(test_config(), door).await;
    t.ehlo().await;
    t.cmd("MAIL FROM:<a@client.example>", 250).await;
    t.cmd("RCPT TO:<x@mx.example>", 250).await;
    let r = t.cmd("RCPT TO:<y@mx.example>", 421).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(4, 7, 0)));
    let (summary, _) = t.finish().await;
    assert_eq!(summary.end, EndReason::Refused);
}

#[tokio::test]
async fn commands_before_the_ehlo_reply_are_refused_when_the_hooks_say_so() {
    let strict = DoorHooks {
        strict_pipelining: true,
        ..DoorHooks::default()
    };
    let mut t = TestSession::start_with(test_config(), strict.clone()).await;
    t.send(b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n")
        .await;
    t.expect(250).await;
    let r = t.expect(554).await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(5, 5, 0)));
    assert_eq!(t.finish().await.0.end, EndReason::Refused);

    // After HELO nothing is offered: any pipelining is refused.
    let mut t = TestSession::start_with(test_config(), strict.clone()).await;
    t.cmd("HELO client.example", 250).await;
    t.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<x@mx.example>\r\n")
        .await;
    t.expect(250).await;
    t.expect(554).await;
    assert_eq!(t.finish().await.0.end, EndReason::Refused);

    // After EHLO's reply, PIPELINING is offered: a pipelined group is fine.
    let mut t = TestSession::start_with(test_config(), strict).await;
    t.ehlo().await;
    t.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<x@mx.example>\r\nDATA\r\n")
        .await;
    t.expect(250).await;
    t.expect(250).await;
    t.expect(354).await;

    // Without the hooks' say-so (a trusted client), EHLO and MAIL in one packet pass.
    let mut t = TestSession::start(test_config()).await;
    t.send(b"EHLO client.example\r\nMAIL FROM:<a@client.example>\r\n")
        .await;
    t.expect(250).await;
    t.expect(250).await;
}

#[tokio::test]
async fn handoff_parameter_is_for_fleet_peers_only() {
    let mut t = TestSession::start(test_config()).await;
    t.ehlo().await;
    let r = t
        .cmd("MAIL FROM:<a@b.example> XFLEET=1,mx1,Q1,5", 555)
        .await;
    assert_eq!(r.status, Some(mta_types::Enhanced::new(5, 7, 1)), "{r:?}");
    t.cmd("MAIL FROM:<a@b.example> XFLEET=9,mx1", 501).await;
    t.cmd("MAIL FROM:<a@b.example>", 250).await;
    t.cmd("RCPT TO:<c@d.example> XFLEET=1,0,0,0,-", 555).await;
    t.cmd("RCPT TO:<c@d.example>", 250).await;
    t.cmd("QUIT", 221).await;
    t.finish().await;
}
