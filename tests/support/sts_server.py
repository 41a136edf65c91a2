"""An MTA-STS policy server for tests (RFC 8461 3.3): HTTPS on HOST:PORT with CERT and KEY,
answering GET /.well-known/mta-sts.txt with the content of POLICY_DIR/<Host header>.txt
(text/plain), read at each request, so a test can change or remove it; no file: 404.
Prints "ready" once listening.

    python3 sts_server.py HOST PORT CERT KEY POLICY_DIR

Each request is logged in POLICY_DIR/hits (one line per fetch: host and path)."""
import http.server, os, socket, ssl, sys

host, port, cert, key, policies = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        name = (self.headers.get("Host") or "").split(":")[0]
        policy = os.path.join(policies, name + ".txt")
        with open(os.path.join(policies, "hits"), "a") as f:
            f.write(name + " " + self.path + "\n")
        if self.path != "/.well-known/mta-sts.txt" or not os.path.exists(policy):
            self.send_error(404)
            return
        body = open(policy, "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in host else socket.AF_INET


srv = Server((host, port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
