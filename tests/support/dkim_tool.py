#!/usr/bin/env python3
"""DKIM with dkimpy (the library behind `dkimverify` and `dkimsign`), for tests/mailauth.rs.

    python3 dkim_tool.py verify DNS_PORT FILE   -> prints "pass" (exit 0) or "fail: why" (exit 1)
    python3 dkim_tool.py sign KEY DOMAIN SELECTOR FILE -> prints the signed message

`verify` checks every DKIM-Signature of FILE as `dkimverify` does, but asks the test zone's
dnsmasq on 127.0.0.1:DNS_PORT for the keys (dkimverify asks /etc/resolv.conf's server).
"""
import sys

import dkim
import dns.resolver


def txt_from(port):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port
    resolver.lifetime = 5

    def get_txt(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(name, "TXT", tcp=False)
        except Exception:
            return None
        for rr in answer:
            return b"".join(rr.strings)
        return None

    return get_txt


def main():
    cmd = sys.argv[1]
    if cmd == "verify":
        port, path = int(sys.argv[2]), sys.argv[3]
        message = open(path, "rb").read()
        d = dkim.DKIM(message)
        count = message.lower().count(b"\ndkim-signature:") + message.lower().startswith(b"dkim-signature:")
        if count == 0:
            print("fail: no DKIM-Signature")
            return 1
        for i in range(count):
            try:
                ok = d.verify(idx=i, dnsfunc=txt_from(port))
            except Exception as e:  # dkimpy raises on malformed input
                print("fail: %s" % e)
                return 1
            if not ok:
                print("fail: signature %d does not verify" % i)
                return 1
        print("pass")
        return 0
    if cmd == "sign":
        key, domain, selector, path = sys.argv[2:6]
        message = open(path, "rb").read()
        header = dkim.sign(
            message,
            selector.encode(),
            domain.encode(),
            open(key, "rb").read(),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        sys.stdout.buffer.write(header + message)
        return 0
    print("unknown command", cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
