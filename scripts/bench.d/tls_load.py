#!/usr/bin/env python3
"""A TLS SMTP load client for scripts/bench (smtp-source has no TLS): asyncio + ssl.

Every session is one TCP connection: 220, EHLO, STARTTLS, a full TLS handshake (no session
resumption: each connection starts from nothing, as a new client does), EHLO again, then the
work of the mode, then QUIT. The certificate is not checked (the bench's MTAs present a
self-signed one); the figures are about the server's cost, not about trust.

Modes (one JSON object on stdout at the end):
  send       --count N messages of --size bytes over --sessions concurrent workers, one
             message per session (as `smtp-source -s 20` without -d);
             {"t0", "t1", "sent", "errors", "tls": {version/cipher: n}}
  handshake  --count N sessions that do STARTTLS and QUIT, no mail (handshake cost);
             --plain: the same sessions without STARTTLS (the baseline to subtract)
  idle       --count N sessions left open after the handshake (with EHLO done); prints
             {"ready": n} once all are up, then holds them until stdin closes

Its own cost, measured on the 2-core bench machine (loaded): about 3.5 ms of CPU per STARTTLS
session with one message (OpenSSL's handshake is C, the rest asyncio), so one process tops out
near 300 sessions/s per core there. The bench reports `client_cpu_pct` next to the rates: at
100 (a whole core) the figure is the client's, not the MTA's.
"""

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time


def context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Session:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    async def reply(self, expect):
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                if not line.startswith(expect):
                    raise RuntimeError("expected %s, got %r" % (expect.decode(), line))
                return line

    async def cmd(self, line, expect):
        self.w.write(line)
        return await self.reply(expect)


async def open_session(host, port, ctx, tls=True, timeout=60):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    s = Session(reader, writer)
    await s.reply(b"220")
    await s.cmd(b"EHLO tls-load.localhost\r\n", b"250")
    if tls:
        await s.cmd(b"STARTTLS\r\n", b"220")
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname=None), timeout)
        await s.cmd(b"EHLO tls-load.localhost\r\n", b"250")
    return s


def tls_name(s):
    obj = s.w.get_extra_info("ssl_object")
    if obj is None:
        return "plaintext"
    return "%s %s" % (obj.version(), obj.cipher()[0])


async def quit(s):
    try:
        await s.cmd(b"QUIT\r\n", b"221")
    except (ConnectionError, RuntimeError, ssl.SSLError, OSError):
        pass
    s.w.close()
    try:
        await s.w.wait_closed()
    except (ConnectionError, ssl.SSLError, OSError):
        pass


def message(i, size, sender, rcpt):
    head = ("From: <%s>\r\nTo: <%s>\r\nSubject: tls load %d\r\nMessage-ID: <tls%d.%d@tls-load.localhost>\r\n\r\n"
            % (sender, rcpt, i, i, int(time.time()))).encode()
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:max(size - len(head), 2)]
    body = body[: body.rfind(b"\r\n") + 2] if b"\r\n" in body else body + b"\r\n"
    return head + body


async def run_sessions(a, work):
    """`a.count` sessions over `a.sessions` workers; `work(i, session)` does the middle."""
    ctx = context()
    next_i = iter(range(a.count))
    errors, tls = [], {}

    async def worker():
        for i in next_i:
            for attempt in range(20):
                try:
                    s = await open_session(a.host, a.port, ctx, tls=not a.plain)
                    name = tls_name(s)
                    await work(i, s)
                    await quit(s)
                    tls[name] = tls.get(name, 0) + 1
                    break
                except (ConnectionError, RuntimeError, ssl.SSLError, OSError, asyncio.TimeoutError) as e:
                    if len(errors) < 10:
                        errors.append("%s: %s" % (type(e).__name__, e))
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError("session %d failed 20 times: %s" % (i, errors[-1:]))

    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    await asyncio.gather(*(worker() for _ in range(a.sessions)))
    t1 = time.time()
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"t0": t0, "t1": t1, "sessions_done": sum(tls.values()), "errors": errors, "tls": tls,
            "client_cpu_pct": 100.0 * cpu / max(t1 - t0, 1e-9)}


async def send(a):
    async def work(i, s):
        await s.cmd(b"MAIL FROM:<%s>\r\n" % a.sender.encode(), b"250")
        await s.cmd(b"RCPT TO:<%s>\r\n" % a.rcpt.encode(), b"250")
        await s.cmd(b"DATA\r\n", b"354")
        s.w.write(message(i, a.size, a.sender, a.rcpt))
        await s.cmd(b".\r\n", b"250")
    out = await run_sessions(a, work)
    out["sent"] = out.pop("sessions_done")
    return out


async def handshake(a):
    async def work(i, s):
        pass
    return await run_sessions(a, work)


async def idle(a):
    ctx = context()
    sem = asyncio.Semaphore(a.sessions)
    errors = []

    async def one():
        async with sem:
            for _ in range(20):
                try:
                    return await open_session(a.host, a.port, ctx, tls=not a.plain)
                except (ConnectionError, RuntimeError, ssl.SSLError, OSError, asyncio.TimeoutError) as e:
                    if len(errors) < 10:
                        errors.append("%s: %s" % (type(e).__name__, e))
                    await asyncio.sleep(0.1)
            return None

    sessions = [s for s in await asyncio.gather(*(one() for _ in range(a.count))) if s]
    print(json.dumps({"ready": len(sessions), "errors": errors}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for s in sessions:
        s.w.close()
    return {"held": len(sessions)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("send", "handshake", "idle"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sender", default="bench@sender.example")
    ap.add_argument("--rcpt", default="rcpt@remote.example")
    ap.add_argument("--plain", action="store_true", help="no STARTTLS (the baseline)")
    a = ap.parse_args()
    if a.mode == "idle":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > 65536:
            hard = 65536
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, hard), hard))
    out = asyncio.run({"send": send, "handshake": handshake, "idle": idle}[a.mode](a))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
