//! The client against a scripted milter over an in-memory stream.

use crate::proto::{self, cmd, protocol, reply, Modification};
use crate::{Message, Milter, MilterError, Timeouts, Verdict};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    command: Duration::from_secs(5),
    content: Duration::from_secs(5),
};

/// The milter's end: reads our packets, writes its own.
struct Peer(DuplexStream);

impl Peer {
    async fn read(&mut self) -> (u8, Vec<u8>) {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).await.expect("length");
        let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut packet).await.expect("packet");
        (packet[0], packet[1..].to_vec())
    }

    /// Reads packets until one with `code`, returning the macros seen before it.
    async fn expect(&mut self, code: u8) -> (Vec<u8>, Vec<u8>) {
        let mut macros = Vec::new();
        loop {
            let (c, data) = self.read().await;
            if c == cmd::MACRO {
                macros = data;
                continue;
            }
            assert_eq!(
                c as char,
                code as char,
                "data {:?}",
                String::from_utf8_lossy(&data)
            );
            return (data, macros);
        }
    }

    /// Expects `code` and answers it with `reply` carrying `data`.
    async fn answer(&mut self, code: u8, reply: u8, data: &[u8]) {
        self.expect(code).await;
        self.send(reply, data).await;
    }

    /// Expects `code` carrying `data`, and lets the MTA go on.
    async fn continue_after(&mut self, code: u8, data: &[u8]) {
        let (got, _) = self.expect(code).await;
        assert_eq!(got, data, "{}", code as char);
        self.send(reply::CONTINUE, b"").await;
    }

    async fn send(&mut self, code: u8, data: &[u8]) {
        let mut out = Vec::new();
        proto::encode(&mut out, code, &[data]);
        self.0.write_all(&out).await.expect("write");
    }

    async fn negotiate(&mut self, protocol: u32) {
        let (data, _) = self.expect(cmd::OPTNEG).await;
        assert_eq!(&data[..4], &6u32.to_be_bytes());
        let reply = [
            6u32.to_be_bytes(),
            0x1ffu32.to_be_bytes(),
            protocol.to_be_bytes(),
        ]
        .concat();
        self.send(reply::OPTNEG, &reply).await;
    }
}

async fn pair(protocol: u32) -> (Milter<DuplexStream>, Peer) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut peer = Peer(theirs);
    let (milter, ()) = tokio::join!(Milter::negotiate(ours, TIMEOUTS), peer.negotiate(protocol));
    (milter.expect("negotiated"), peer)
}

const CONTENT: &[u8] = b"Received: ours\r\nSubject: test\r\nTo: <a@b>\r\n\r\nline 1\r\nline 2\r\n";

#[tokio::test]
async fn a_whole_session_with_modifications() {
    let (mut m, mut peer) = pair(0).await;
    let client = "192.0.2.7:4242".parse().unwrap();
    let milter_side = async {
        let (data, macros) = peer.expect(cmd::CONNECT).await;
        assert_eq!(data, b"[192.0.2.7]\x004\x10\x92192.0.2.7\0");
        assert_eq!(macros, b"Cj\0mx.test\0");
        peer.send(reply::CONTINUE, b"").await;
        peer.continue_after(cmd::HELO, b"client.test\0").await;
        let (data, macros) = peer.expect(cmd::MAIL).await;
        assert_eq!(data, b"<s@x>\0SIZE=10\0");
        assert_eq!(macros, b"Mi\0QID\0");
        peer.send(reply::CONTINUE, b"").await;
        let (data, _) = peer.expect(cmd::RCPT).await;
        assert_eq!(data, b"<r@y>\0");
        peer.send(reply::REPLYCODE, b"550 5.1.1 not him\0").await;
        peer.continue_after(cmd::RCPT, b"<r@y>\0").await;
        peer.continue_after(cmd::DATA, b"").await;
        peer.continue_after(cmd::HEADER, b"Subject\0test\0").await;
        peer.continue_after(cmd::HEADER, b"To\0<a@b>\0").await;
        peer.continue_after(cmd::EOH, b"").await;
        peer.continue_after(cmd::BODY, b"line 1\r\nline 2\r\n")
            .await;
        let (_, macros) = peer.expect(cmd::BODYEOB).await;
        assert_eq!(macros, b"Ei\0QID\0");
        // The end-of-message answer: modifications (and a progress note), then ACCEPT.
        let answer: [(u8, &[u8]); 9] = [
            (reply::ADDHEADER, b"X-Spam\0yes\0"),
            (reply::PROGRESS, b""),
            (reply::CHGHEADER, b"\0\0\0\x01Subject\0\0"),
            (reply::ADDRCPT, b"<new@y>\0"),
            (reply::DELRCPT, b"<r@y>\0"),
            (reply::CHGFROM, b"<other@x>\0"),
            (reply::REPLBODY, b"replaced\r\n"),
            (reply::QUARANTINE, b"looks odd\0"),
            (reply::ACCEPT, b""),
        ];
        for (code, data) in answer {
            peer.send(code, data).await;
        }
        peer.expect(cmd::QUIT).await;
    };
    let mta_side = async {
        assert_eq!(
            m.connect_event("[192.0.2.7]", client, &[("j", "mx.test")])
                .await
                .unwrap(),
            Verdict::Continue
        );
        assert_eq!(m.helo("client.test", &[]).await.unwrap(), Verdict::Continue);
        let v = m
            .mail(&["<s@x>", "SIZE=10"], &[("i", "QID")])
            .await
            .unwrap();
        assert_eq!(v, Verdict::Continue);
        assert_eq!(
            m.rcpt(&["<r@y>"], &[]).await.unwrap(),
            Verdict::ReplyCode("550 5.1.1 not him".into())
        );
        assert_eq!(m.rcpt(&["<r@y>"], &[]).await.unwrap(), Verdict::Continue);
        assert_eq!(m.data(&[]).await.unwrap(), Verdict::Continue);
        let mut msg = Message::parse(CONTENT, 1);
        let eom = m.message(&msg, &[("i", "QID")]).await.unwrap();
        assert_eq!(eom.verdict, Verdict::Accept);
        assert_eq!(eom.quarantine.as_deref(), Some("looks odd"));
        assert_eq!(eom.modifications.len(), 6);
        let envelope = msg.apply(&eom.modifications, false);
        assert_eq!(
            envelope,
            vec![
                Modification::AddRcpt {
                    rcpt: "<new@y>".into(),
                    args: None
                },
                Modification::DelRcpt("<r@y>".into()),
                Modification::ChangeFrom {
                    from: "<other@x>".into(),
                    args: None
                },
            ]
        );
        assert_eq!(
            msg.to_bytes(),
            b"Received: ours\r\nTo: <a@b>\r\nX-Spam: yes\r\n\r\nreplaced\r\n"
        );
        m.quit().await;
    };
    tokio::join!(milter_side, mta_side);
}

#[tokio::test]
async fn events_not_wanted_are_not_sent_and_unanswered_ones_wait() {
    let p = protocol::NOCONNECT
        | protocol::NOHELO
        | protocol::NR_HDR
        | protocol::NOBODY
        | protocol::NR_EOH;
    let (mut m, mut peer) = pair(p).await;
    let milter_side = async {
        // Headers and EOH come without a reply in between, then end of message.
        peer.expect(cmd::HEADER).await;
        peer.expect(cmd::HEADER).await;
        peer.expect(cmd::EOH).await;
        peer.answer(cmd::BODYEOB, reply::CONTINUE, b"").await;
    };
    let mta_side = async {
        let client = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            m.connect_event("x", client, &[]).await.unwrap(),
            Verdict::Continue
        );
        assert_eq!(m.helo("x", &[]).await.unwrap(), Verdict::Continue);
        let eom = m.message(&Message::parse(CONTENT, 1), &[]).await.unwrap();
        assert_eq!(eom.verdict, Verdict::Continue);
    };
    tokio::join!(milter_side, mta_side);
}

#[tokio::test]
async fn a_reject_during_the_headers_ends_the_message() {
    let (mut m, mut peer) = pair(0).await;
    let milter_side = async {
        peer.answer(cmd::HEADER, reply::REJECT, b"").await;
    };
    let mta_side = async { m.message(&Message::parse(CONTENT, 1), &[]).await.unwrap() };
    let ((), eom) = tokio::join!(milter_side, mta_side);
    assert_eq!(eom.verdict, Verdict::Reject);
}

#[tokio::test]
async fn skip_stops_the_body() {
    let (mut m, mut peer) = pair(protocol::SKIP | protocol::NOHDRS).await;
    let big = [b"Subject: x\r\n\r\n".as_slice(), &vec![b'a'; 200_000]].concat();
    let milter_side = async {
        peer.answer(cmd::EOH, reply::CONTINUE, b"").await;
        let (chunk, _) = peer.expect(cmd::BODY).await;
        assert_eq!(chunk.len(), proto::MAX_BODY_CHUNK);
        peer.send(reply::SKIP, b"").await;
        peer.answer(cmd::BODYEOB, reply::DISCARD, b"").await;
    };
    let mta_side = async { m.message(&Message::parse(&big, 0), &[]).await.unwrap() };
    let ((), eom) = tokio::join!(milter_side, mta_side);
    assert_eq!(eom.verdict, Verdict::Discard);
}

#[tokio::test(start_paused = true)]
async fn a_silent_milter_times_out() {
    let (mut m, mut peer) = pair(0).await;
    let started = tokio::time::Instant::now();
    let milter_side = async {
        peer.expect(cmd::HELO).await;
        // ...and never answers.
        std::future::pending::<()>().await;
    };
    let mta_side = m.helo("x", &[]);
    let err = tokio::select! {
        () = milter_side => unreachable!(),
        r = mta_side => r.unwrap_err(),
    };
    assert!(
        matches!(err, MilterError::Timeout { stage: "helo", .. }),
        "{err}"
    );
    assert_eq!(err.kind(), "timeout");
    assert!(started.elapsed() >= TIMEOUTS.command);
}

#[tokio::test]
async fn garbage_and_a_closed_connection_are_errors() {
    let (mut m, mut peer) = pair(0).await;
    let milter_side = async {
        peer.expect(cmd::HELO).await;
        peer.0
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
    };
    let (_, r) = tokio::join!(milter_side, m.helo("x", &[]));
    let err = r.unwrap_err();
    assert!(matches!(err, MilterError::Protocol { .. }), "{err}");

    let (mut m, mut peer) = pair(0).await;
    let milter_side = async {
        peer.expect(cmd::MAIL).await;
        drop(peer);
    };
    let (_, r) = tokio::join!(milter_side, m.mail(&["<>"], &[]));
    assert!(matches!(r.unwrap_err(), MilterError::Io { .. }));
}

#[tokio::test]
async fn a_modification_before_end_of_message_is_garbage() {
    let (mut m, mut peer) = pair(0).await;
    let milter_side = async {
        peer.answer(cmd::RCPT, reply::ADDHEADER, b"X\0y\0").await;
    };
    let (_, r) = tokio::join!(milter_side, m.rcpt(&["<a@b>"], &[]));
    assert!(matches!(
        r.unwrap_err(),
        MilterError::Protocol { stage: "rcpt", .. }
    ));
}

#[tokio::test]
async fn old_versions_are_refused() {
    let (ours, theirs) = tokio::io::duplex(4096);
    let mut peer = Peer(theirs);
    let milter_side = async {
        peer.expect(cmd::OPTNEG).await;
        let reply = [1u32.to_be_bytes(), 0u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
        peer.send(reply::OPTNEG, &reply).await;
    };
    let (_, r) = tokio::join!(milter_side, Milter::negotiate(ours, TIMEOUTS));
    assert!(matches!(r.err().unwrap(), MilterError::Negotiation(_)));
}
