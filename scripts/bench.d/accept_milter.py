#!/usr/bin/env python3
"""A milter that accepts everything at once (issue 25's figure: the cost of the milter
client itself). Speaks the Sendmail milter protocol v6 on 127.0.0.1:PORT: negotiates, then
answers ACCEPT to the connect stage, so an MTA sends nothing more for the session; any other
command that wants a reply gets CONTINUE (ACCEPT at end of message). A thread per connection.

    accept_milter.py PORT
"""
import socket
import struct
import sys
import threading

# Commands after which the MTA waits for no reply.
NO_REPLY = {b"D", b"A", b"Q", b"K"}


def read_packet(f):
    head = f.read(4)
    if len(head) < 4:
        return None, None
    (n,) = struct.unpack(">I", head)
    body = f.read(n)
    if len(body) < n or n == 0:
        return None, None
    return body[:1], body[1:]


def reply(conn, code, data=b""):
    conn.sendall(struct.pack(">I", 1 + len(data)) + code + data)


def serve(conn):
    f = conn.makefile("rb")
    try:
        while True:
            cmd, _ = read_packet(f)
            if cmd is None or cmd == b"Q":
                return
            if cmd == b"O":
                # Version 6, no modification actions, no protocol steps skipped.
                reply(conn, b"O", struct.pack(">III", 6, 0, 0))
            elif cmd in (b"C", b"E"):
                reply(conn, b"a")
            elif cmd not in NO_REPLY:
                reply(conn, b"c")
    except OSError:
        pass
    finally:
        conn.close()


def main():
    port = int(sys.argv[1])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1024)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
