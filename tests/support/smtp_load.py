#!/usr/bin/env python3
"""Usage: smtp_load.py HOST PORT COUNT SESSIONS RCPT[,RCPT...] [PER_CONN] [TRIES]
Send COUNT messages over SESSIONS concurrent smtplib connections (a message whose session
fails is retried on a new connection, up to TRIES failures per client (default 100, 0.1 s
apart when the connection is refused), like a client retrying later); print one JSON object:
{"accepted": [message-id, ...], "refused": n, "errors": [...]}. A message counts as accepted
only when the server answered 250 to its DATA. Bounded: every socket has a timeout."""
import json, smtplib, sys, threading, uuid
from email.message import EmailMessage

host, port, count, sessions, rcpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rcpts = rcpt.split(",")  # several recipients: comma-separated
per_conn = int(sys.argv[6]) if len(sys.argv) > 6 else 10
max_tries = int(sys.argv[7]) if len(sys.argv) > 7 else 100
lock = threading.Lock()
accepted, errors, refused = [], [], [0]
next_index = [0]

def take():
    with lock:
        if next_index[0] >= count:
            return None
        next_index[0] += 1
        return next_index[0]

import time

def worker():
    retry, tries = None, 0
    while True:
        first = retry if retry is not None else take()
        retry = None
        if first is None:
            return
        try:
            s = smtplib.SMTP(host, port, timeout=30)
            s.ehlo("load.test")
        except Exception as e:  # connection refused etc.: try this message again later
            with lock:
                errors.append(repr(e)); refused[0] += 1
            tries += 1
            if tries < max_tries:
                retry = first
                time.sleep(0.1)
            continue
        i, sent_here = first, 0
        while i is not None:
            mid = "<%s.%d@load.test>" % (uuid.uuid4().hex, i)
            msg = EmailMessage()
            msg["From"] = "sender@load.test"; msg["To"] = ", ".join(rcpts)
            msg["Subject"] = "load %d" % i; msg["Message-ID"] = mid
            msg.set_content("message %d\n" % i + "x" * 700 + "\n")
            try:
                s.send_message(msg, from_addr="sender@load.test", to_addrs=rcpts)
                with lock:
                    accepted.append(mid)
            except Exception as e:
                with lock:
                    errors.append(repr(e)); refused[0] += 1
                tries += 1
                if tries < max_tries:
                    retry = i  # not acknowledged: send it again on a new connection
                break
            sent_here += 1
            if sent_here >= per_conn:
                break
            i = take()
        try:
            s.quit()
        except Exception:
            pass

threads = [threading.Thread(target=worker) for _ in range(sessions)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"accepted": accepted, "refused": refused[0], "errors": errors[:20]}))
