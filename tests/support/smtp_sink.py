#!/usr/bin/env python3
"""A small SMTP sink for the outbound tests (standard library only).

    python3 smtp_sink.py HOST PORT DIR [--tempfail-first N] [--no-8bitmime] [--greet-451]

Prints "ready" once listening. Each accepted message is saved as DIR/msg-<n>.eml (the exact
DATA bytes, dot-unstuffed, ending CRLF) with DIR/msg-<n>.env (JSON: mail_from, rcpts),
written .env first, then .eml by rename. Per-recipient behaviour, by the local part:
  contains "reject" -> 550 5.1.1 at RCPT
  contains "defer"  -> 451 4.2.1 at RCPT
  contains "drop"   -> accepted, then the connection is closed in the middle of DATA
--tempfail-first N: the first N RCPT commands get 451 whatever the address.
--greet-451: every connection is greeted with 451 and closed.
--tls CERT KEY: offer STARTTLS with this certificate; each .env then says which TLS
  version the session used ("tls": "TLSv1.3", or null for plaintext).
--starttls-broken: offer STARTTLS, answer 220, then close instead of a handshake.
--throttle BPS: message content is read at about BPS bytes a second (a slow next hop:
  a large message takes long, a small one goes through at once).
--also-bind IP: listen on IP too (same port): two "sites" on one sink.
--max-concurrent N: refuse a connection to the first address with 421 4.7.0 while N are
  already open there (a receiver's connection limit).
--greet-421-first N: the first N connections are greeted "421 4.7.0 rate limited, try
  again later" and closed.
--conn-log FILE: one JSON line per connection when it closes: {"local", "open", "close",
  "refused"} (times from time.time()); each .env also gets "local", "at" (saved) and "mail_at" (its MAIL FROM arrived). A session
  that ends with QUIT counts as closed when the QUIT arrives (before the 221: the client
  may open its next connection as soon as it reads it, before this thread runs again).
Every socket has a timeout, so a stuck client cannot hold the sink."""
import json, os, socket, ssl, sys, threading, time

host, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
args = sys.argv[4:]
tempfail_left = [int(args[args.index("--tempfail-first") + 1]) if "--tempfail-first" in args else 0]
eight_bit = "--no-8bitmime" not in args
greet_451 = "--greet-451" in args
tls_ctx = None
if "--tls" in args:
    i = args.index("--tls")
    tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_ctx.load_cert_chain(args[i + 1], args[i + 2])
starttls_broken = "--starttls-broken" in args
throttle = int(args[args.index("--throttle") + 1]) if "--throttle" in args else 0
also_bind = args[args.index("--also-bind") + 1] if "--also-bind" in args else None
max_concurrent = int(args[args.index("--max-concurrent") + 1]) if "--max-concurrent" in args else 0
greet_421_left = [int(args[args.index("--greet-421-first") + 1]) if "--greet-421-first" in args else 0]
conn_log = args[args.index("--conn-log") + 1] if "--conn-log" in args else None
lock = threading.Lock()
counter = [0]
open_on = {}
os.makedirs(folder, exist_ok=True)


def save(mail_from, rcpts, data, tls, local=None, session=None, mail_at=None):
    with lock:
        counter[0] += 1
        n = counter[0]
    base = os.path.join(folder, "msg-%06d" % n)
    with open(base + ".env", "w") as f:
        json.dump({"mail_from": mail_from, "rcpts": rcpts, "tls": tls, "local": local, "at": time.time(), "mail_at": mail_at, "session": session}, f)
    with open(base + ".tmp", "wb") as f:
        f.write(data)
    os.rename(base + ".tmp", base + ".eml")


def serve(conn):
    local = conn.getsockname()[0]
    opened = time.time()
    with lock:
        busy = open_on.get(local, 0)
        refuse = max_concurrent and local == host and busy >= max_concurrent
        greet_421 = greet_421_left[0] > 0
        if greet_421:
            greet_421_left[0] -= 1
        if not refuse:
            open_on[local] = busy + 1
    ended = [False]

    def end():
        if ended[0]:
            return
        ended[0] = True
        closed = time.time()
        with lock:
            if not refuse:
                open_on[local] -= 1
            if conn_log:
                with open(conn_log, "a") as f:
                    f.write(json.dumps({"local": local, "open": opened, "close": closed, "refused": bool(refuse or greet_421)}) + "\n")

    try:
        if refuse or greet_421:
            why = "too many connections" if refuse else "rate limited, try again later"
            conn.sendall(("421 4.7.0 %s\r\n" % why).encode())
            conn.close()
        else:
            serve_session(conn, local, end)
    finally:
        end()


def serve_session(conn, server_ip, end=lambda: None):
    conn.settimeout(30)
    f = conn.makefile("rb")

    def send(line):
        conn.sendall(line.encode() + b"\r\n")

    if greet_451:
        send("451 4.3.2 not now")
        conn.close()
        return
    send("220 sink.test ESMTP test sink")
    mail_from, rcpts, drop, tls, mail_at = None, [], False, None, None
    try:
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                ext = ["SIZE 10000000", "PIPELINING", "SMTPUTF8"]
                if (tls_ctx is not None or starttls_broken) and tls is None:
                    ext.append("STARTTLS")
                if eight_bit:
                    ext.append("8BITMIME")
                lines = ["sink.test"] + ext
                for i, l in enumerate(lines):
                    send(("250-" if i < len(lines) - 1 else "250 ") + l)
            elif verb == "STARTTLS" and starttls_broken:
                send("220 2.0.0 go ahead")
                conn.close()
                return
            elif verb == "STARTTLS" and tls_ctx is not None and tls is None:
                send("220 2.0.0 go ahead")
                conn = tls_ctx.wrap_socket(conn, server_side=True)
                conn.settimeout(30)
                f = conn.makefile("rb")
                tls = conn.version()
                mail_from, rcpts = None, []
            elif verb == "HELO":
                send("250 sink.test")
            elif verb == "MAIL":
                mail_from, rcpts, drop = cmd[10:].split(">")[0].lstrip("<"), [], False
                mail_at = time.time()
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = cmd[8:].split(">")[0].lstrip("<")
                local = addr.split("@")[0]
                with lock:
                    tf = tempfail_left[0] > 0
                    if tf:
                        tempfail_left[0] -= 1
                if tf or "defer" in local:
                    send("451 4.2.1 try again later")
                elif "reject" in local:
                    send("550 5.1.1 <%s>: no such user" % addr)
                else:
                    if "drop" in local:
                        drop = True
                    rcpts.append(addr)
                    send("250 2.1.5 ok")
            elif verb == "DATA":
                if not rcpts:
                    send("503 5.5.1 no recipients")
                    continue
                send("354 go ahead")
                data = bytearray()
                started = time.monotonic()
                while True:
                    if throttle:
                        ahead = len(data) / throttle - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    l = f.readline()
                    if not l:
                        return
                    if drop and len(data) > 0:
                        conn.shutdown(socket.SHUT_RDWR)
                        conn.close()
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    data += l
                save(mail_from, rcpts, bytes(data), tls, server_ip, "%s:%d" % conn.getpeername()[:2], mail_at)
                send("250 2.0.0 queued as %d" % counter[0])
            elif verb == "RSET":
                mail_from, rcpts, drop = None, [], False
                send("250 2.0.0 ok")
            elif verb == "NOOP":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                end()
                send("221 2.0.0 bye")
                return
            else:
                send("502 5.5.2 not implemented")
    except (OSError, socket.timeout):
        return
    finally:
        try:
            conn.close()
        except OSError:
            pass


def listen(ip):
    srv = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(128)
    return srv


def accept_loop(srv):
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


servers = [listen(host)] + ([listen(also_bind)] if also_bind else [])
print("ready", flush=True)
for extra in servers[1:]:
    threading.Thread(target=accept_loop, args=(extra,), daemon=True).start()
accept_loop(servers[0])
