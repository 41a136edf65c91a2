#!/usr/bin/env python3
"""smtpmta vs Postfix, side by side (issue 6). Run through scripts/bench, which installs the
tools and builds smtpmta first.

Every run: a fresh data/queue directory, a fresh daemon, a fresh smtp-sink as the only next hop,
the load from smtp-source (or our own client for latency and idle connections), and the figures
taken until the sink (or the Maildir) has every message and the queue is empty. Each MTA's
processes live in their own cgroup v2 group when one can be created (CPU = the group's
usage_usec, which includes exited children); otherwise the /proc tree of the daemon is summed.
Everything started here is stopped by pid; the system Postfix (/etc/postfix) is never touched.
"""

import argparse
import datetime
import hashlib
import json
import os
import pwd
import random
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REL = os.path.join(REPO, "target", "release")
SMTPMTA = os.path.join(REL, "smtpmta")
MTACON = os.path.join(REL, "mtacon")
SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"
LOCAL_USER = "smtpbench"
SENDER = "bench@sender.example"
REMOTE_RCPT = "rcpt@remote.example"
LOCAL_RCPT = LOCAL_USER + "@localhost"
FSYNC_CALLS = "fsync,fdatasync,sync_file_range,syncfs,msync"  # all traced (details block)
DURABLE_CALLS = ("fsync", "fdatasync", "syncfs", "msync")       # fsync_per_msg: real durability
# sync_file_range starts writeback but flushes neither metadata nor the disk cache: counted
# apart as sfr_per_msg ("not durable").

STARTED = []          # Popen objects we started (killed by pid on exit)
CLEANUPS = []         # callables run on exit, last first


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# A finished run's folder is moved aside, not deleted: deleting thousands of files leaves
# thousands of recently freed inodes, which ext4's inode allocator scans past (and will not
# reuse) for a minute or more, and the next run's file creations paid for it — a local
# delivery run measured at half speed with 39 % of the samples in `find_inode_bit` and
# `recently_deleted` (docs/BENCHMARKS.md). The folders go at the end of the bench, or
# earlier when the file system gets full.
DISCARDED = []


def discard(path):
    if not os.path.exists(path):
        return
    usage = shutil.disk_usage(path)
    if usage.free < 0.2 * usage.total:
        while DISCARDED:
            shutil.rmtree(DISCARDED.pop(), ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        return
    aside = "%s.done-%d" % (path.rstrip("/"), len(DISCARDED))
    try:
        os.rename(path, aside)
        DISCARDED.append(aside)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def purge_discarded():
    while DISCARDED:
        shutil.rmtree(DISCARDED.pop(), ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


def spawn(cmd, out, cgroup=None, **kw):
    pre = None
    if cgroup is not None:
        procs = os.path.join(cgroup.path, "cgroup.procs")

        def pre():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         preexec_fn=pre, **kw)
    STARTED.append(p)
    return p


def stop_proc(p, sig=signal.SIGTERM, wait=15):
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass
    if p in STARTED:
        STARTED.remove(p)


# ---------------------------------------------------------------- process accounting

def cgroup2_root():
    try:
        for line in open("/proc/mounts"):
            f = line.split()
            if f[2] == "cgroup2":
                return f[1]
    except OSError:
        pass
    return None


class Group:
    """The processes of one MTA run: a cgroup v2 child when possible, else a /proc tree."""

    base = None

    @classmethod
    def setup(cls):
        root = cgroup2_root()
        if root:
            path = os.path.join(root, "smtpmta-bench.%d" % os.getpid())
            try:
                os.mkdir(path)
                cls.base = path
                CLEANUPS.append(lambda: cls._rmdir(path))
            except OSError as e:
                log("cgroup v2 not writable (%s): using /proc sums" % e)
        return cls.base

    @staticmethod
    def _rmdir(path):
        for _ in range(50):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def __init__(self, name):
        self.path = None
        self.root_pids = []  # fallback: roots of the /proc tree
        if Group.base:
            self.path = os.path.join(Group.base, "%s-%d" % (name, random.randrange(1 << 30)))
            os.mkdir(self.path)

    def pids(self):
        if self.path:
            try:
                return [int(x) for x in open(os.path.join(self.path, "cgroup.procs")).read().split()]
            except OSError:
                return []
        return proc_tree(self.root_pids)

    def cpu_usec(self):
        if self.path:
            for line in open(os.path.join(self.path, "cpu.stat")):
                k, v = line.split()
                if k == "usage_usec":
                    return int(v)
        tck = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
            except (OSError, IndexError):
                pass
        return total * 1_000_000 // tck

    def pss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                for line in open("/proc/%d/smaps_rollup" % pid):
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            except OSError:
                pass
        return total

    def kill_rest(self, timeout=15, remove=True):
        deadline = time.time() + timeout
        while self.pids() and time.time() < deadline:
            time.sleep(0.1)
        for pid in self.pids():  # every pid here descends from a process we started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.path and remove:
            Group._rmdir(self.path)


def proc_tree(roots):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError):
                pass
    out, todo = [], [r for r in roots if os.path.exists("/proc/%d" % r)]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class PssSampler(threading.Thread):
    def __init__(self, group, every=0.2):
        super().__init__(daemon=True)
        self.group, self.every, self.peak, self.halt = group, every, 0, threading.Event()

    def run(self):
        while not self.halt.is_set():
            self.peak = max(self.peak, self.group.pss_kib())
            self.halt.wait(self.every)

    def stop(self):
        self.halt.set()
        self.join()
        self.peak = max(self.peak, self.group.pss_kib())
        return self.peak


# ---------------------------------------------------------------- the sink

class Sink:
    def __init__(self, workdir, port=None):
        self.port = port or free_port()
        self.out = os.path.join(workdir, "sink-%d.out" % self.port)
        self.f = open(self.out, "wb")
        self.p = spawn([SINK, "-c", "-u", "nobody", "127.0.0.1:%d" % self.port, "1024"], self.f)
        self.pos, self.count = 0, 0
        wait_port(self.port, banner=False)

    def messages(self):
        with open(self.out, "rb") as f:
            f.seek(max(0, self.pos - 64))
            data = f.read()
            self.pos = f.tell()
        m = re.findall(rb"mesg=(\d+)", data)
        if m:
            self.count = int(m[-1])
        return self.count

    def close(self):
        stop_proc(self.p)
        self.f.close()


def wait_port(port, banner=True, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if banner:
                data = s.recv(512)
                if data.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                    s.close()
                    return
            else:
                s.close()
                return
            s.close()
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("port %d did not answer with a banner" % port)


def wait_until(pred, timeout, what, every=0.01):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return time.time()
        time.sleep(every)
    raise RuntimeError("timed out after %ds waiting for %s" % (timeout, what))


def count_files(d):
    try:
        return sum(1 for e in os.scandir(d) if e.is_file())
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------- the two MTAs

class Smtpmta:
    name = "smtpmta"

    def __init__(self, top, sink_port, metrics=False, extra="", tls=None, trusted="127.0.0.0/8",
                 directory_extra="", inbound=""):
        self.dir = tempfile.mkdtemp(prefix="smtpmta-", dir=top)
        self.port = free_port()
        self.metrics_port = free_port() if metrics else None
        metrics_listen = "127.0.0.1:%d" % self.metrics_port if metrics else ""
        self.cfg = os.path.join(self.dir, "smtpmta.toml")
        with open(self.cfg, "w") as f:
            f.write(f'''hostname = "bench-smtpmta.localhost"
data_dir = "data"
local_domains = ["localhost"]
trusted_networks = ["{trusted}"]
directory = "directory.toml"

[inbound]
listen = ["127.0.0.1:{self.port}"]
max_handlers = 1100
{inbound}

[outbound]
relay_host = "127.0.0.1:{sink_port}"

[metrics]
listen = "{metrics_listen}"
{extra}''' + ('''
[tls]
certificate = "{0}"
private_key = "{1}"
'''.format(*tls) if tls else ""))
        with open(os.path.join(self.dir, "directory.toml"), "w") as f:
            f.write(f'''[[user]]
name = "{LOCAL_USER}"
addresses = ["{LOCAL_RCPT}"]
maildir = "mail/{LOCAL_USER}"
{directory_extra}''')
        self.maildir_new = os.path.join(self.dir, "data", "mail", LOCAL_USER, "new")
        self.group = Group("smtpmta")
        self.log = open(os.path.join(self.dir, "smtpmta.log"), "ab")
        self.start()
        wait_port(self.port)

    def start(self):
        self.p = spawn([SMTPMTA, "--config", self.cfg], self.log, cgroup=self.group)
        self.group.root_pids = [self.p.pid]

    def halt(self):
        """SIGTERM to the supervisor, wait for it and for every process of the group."""
        stop_proc(self.p, wait=60)
        self.group.kill_rest(timeout=30, remove=False)

    def con(self, cmd, json_out=False, timeout=300):
        args = [MTACON, "--config", self.cfg] + (["--json"] if json_out else []) + [cmd]
        r = run(args, timeout=timeout)
        return json.loads(r.stdout) if json_out else r.stdout

    def queue_counts(self):
        q = self.con("show queue", json_out=True)
        return {(e["queue"] or e["state"]): e["messages"] for e in q["queue"]}

    def queue_empty(self):
        return sum(self.queue_counts().values()) == 0

    def stop_outbound(self):
        self.con("tell smtpmta stop outbound transport")

    def held_all(self, n):
        c = self.queue_counts()
        return c.get("outbound-work", 0) >= n and sum(c.values()) == c.get("outbound-work", 0)

    def start_outbound(self):
        self.con("tell smtpmta start outbound transport")

    def stop(self):
        stop_proc(self.p, wait=30)
        self.group.kill_rest()
        self.log.close()
        discard(self.dir)


class Postfix:
    name = "postfix"

    def __init__(self, top, sink_port, defer=False, extra="", tls=None, metrics=False):
        # `metrics`: smtpmta's /metrics; Postfix has none.
        if tls:
            extra += ("smtpd_tls_security_level = may\nsmtpd_tls_cert_file = %s\n"
                      "smtpd_tls_key_file = %s\nsmtpd_tls_loglevel = 0\n" % tls)
        self.dir = tempfile.mkdtemp(prefix="postfix-", dir=top)
        os.chmod(self.dir, 0o755)
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        data = os.path.join(self.dir, "data")
        for d in (self.etc, self.queue, data):
            os.mkdir(d)
        shutil.chown(data, "postfix")
        self.port = free_port()
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(f"""# generated by scripts/bench: a private instance, not the system Postfix
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {data}
syslog_name = postfix-bench
myhostname = bench-postfix.localhost
mydomain = localhost
myorigin = localhost
mydestination = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
alias_maps =
alias_database =
home_mailbox = Maildir/
""" + ("defer_transports = smtp, relay\n" if defer else "") + extra)
        with open("/etc/postfix/master.cf") as src, open(os.path.join(self.etc, "master.cf"), "w") as dst:
            for line in src:
                f = line.split()
                if line[:1] in "# \t\n" or len(f) < 8:
                    dst.write(line)
                    continue
                if f[0] == "smtp" and f[1] == "inet":
                    f[0], f[6] = "127.0.0.1:%d" % self.port, "1100"
                f[4] = "n"  # no chroot (the private queue has no chroot files)
                dst.write("\t".join(f) + "\n")
        self.home = LocalUser.home
        discard(os.path.join(self.home, "Maildir"))
        self.maildir_new = os.path.join(self.home, "Maildir", "new")
        self.group = Group("postfix")
        r = run(["postfix", "-c", self.etc, "check"], check=False)
        if r.returncode:
            raise RuntimeError("postfix check: " + r.stdout)
        CLEANUPS.append(self._emergency_stop)
        self.start()
        wait_port(self.port)

    def start(self):
        starter = spawn(["postfix", "-c", self.etc, "start"], subprocess.DEVNULL, cgroup=self.group)
        try:
            rc = starter.wait(timeout=300)
        finally:
            stop_proc(starter)
        if rc != 0:
            raise RuntimeError("postfix -c %s start failed" % self.etc)
        self.master = int(open(os.path.join(self.queue, "pid", "master.pid")).read().split()[0])
        self.group.root_pids = [self.master]

    def halt(self):
        """`postfix stop` (SIGTERM to master; it waits), then wait for every process of the group."""
        run(["postfix", "-c", self.etc, "stop"], check=False, timeout=120)
        self.group.kill_rest(timeout=30, remove=False)

    def _emergency_stop(self):
        if os.path.exists(self.etc):
            run(["postfix", "-c", self.etc, "stop"], check=False)

    def queued(self):
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def queue_empty(self):
        return self.queued() == 0

    def stop_outbound(self):
        pass  # started with defer_transports

    def cnt(self, sub):
        return sum(len(f) for _, _, f in os.walk(os.path.join(self.queue, sub)))

    def held_all(self, n):
        d = self.cnt("deferred")
        return d >= n and self.queued() == d

    def start_outbound(self):
        run(["postconf", "-c", self.etc, "-e", "defer_transports ="])
        run(["postfix", "-c", self.etc, "reload"])
        run(["postqueue", "-c", self.etc, "-f"])

    def stop(self):
        run(["postfix", "-c", self.etc, "stop"], check=False)
        self.group.kill_rest()
        CLEANUPS.remove(self._emergency_stop)
        discard(self.dir)


class Chasquid:
    """chasquid (Go; Debian package), the second peer. It relays only for authenticated
    users, so the bench's unauthenticated load goes to a local alias that forwards to the
    remote recipient: the same queue-and-relay work per message. Its MX lookup goes to a
    private dnsmasq (remote.example → 127.0.0.1), and its outgoing port is the sink's
    (`-testing__outgoing_smtp_port`); /etc/resolv.conf is replaced only in its own mount
    namespace. chasquid does not fsync its queue (it writes files and renames them)."""
    name = "chasquid"
    relay_rcpt = "rcpt@bench.local"
    DNS_IP = "127.0.0.153"
    DOMAIN = "bench.local"

    def __init__(self, top, sink_port, **_):
        self.dir = tempfile.mkdtemp(prefix="chasquid-", dir=top)
        os.chmod(self.dir, 0o755)
        etc = os.path.join(self.dir, "etc")
        os.makedirs(os.path.join(etc, "domains", self.DOMAIN))
        # chasquid will not start without a certificate (it offers STARTTLS; smtp-source
        # does not take it).
        certs = os.path.join(etc, "certs", "bench-chasquid.localhost")
        os.makedirs(certs)
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=bench-chasquid.localhost", "-keyout", os.path.join(certs, "privkey.pem"),
             "-out", os.path.join(certs, "fullchain.pem")])
        data = os.path.join(self.dir, "data")
        os.mkdir(data)
        self.port = free_port()
        with open(os.path.join(etc, "chasquid.conf"), "w") as f:
            f.write(f"""hostname: "bench-chasquid.localhost"
smtp_address: "127.0.0.1:{self.port}"
submission_address: "127.0.0.1:{free_port()}"
submission_over_tls_address: "127.0.0.1:{free_port()}"
data_dir: "{data}"
mail_log_path: "{os.path.join(self.dir, 'mail.log')}"
max_data_size_mb: 200
""")
        with open(os.path.join(etc, "domains", self.DOMAIN, "aliases"), "w") as f:
            f.write("rcpt: %s\n" % REMOTE_RCPT)
        resolv = os.path.join(self.dir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver %s\noptions timeout:1 attempts:1\n" % self.DNS_IP)
        self.group = Group("chasquid")
        self.log = open(os.path.join(self.dir, "chasquid.log"), "ab")
        self.dns = spawn(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                          "--bind-interfaces", "--listen-address=" + self.DNS_IP, "--port=53",
                          "--mx-host=remote.example,mx.remote.example,10",
                          "--address=/remote.example/127.0.0.1",
                          "--local=/sender.example/", "--local=/%s/" % self.DOMAIN,
                          "--local=/localhost/", "--pid-file="], self.log)
        self.cmd = ["unshare", "-m", "--", "sh", "-c",
                    'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv,
                    "chasquid", "-config_dir", etc, "-testing__outgoing_smtp_port", str(sink_port),
                    "-logfile", os.path.join(self.dir, "chasquid.log")]
        self.queue = os.path.join(data, "queue")
        self.start()
        wait_port(self.port)

    def start(self):
        self.p = spawn(self.cmd, self.log, cgroup=self.group)
        self.group.root_pids = [self.p.pid]

    def halt(self):
        stop_proc(self.p, wait=60)
        self.group.kill_rest(timeout=30, remove=False)

    def queued(self):
        try:
            return len(os.listdir(self.queue))
        except FileNotFoundError:
            return 0

    def queue_empty(self):
        return self.queued() == 0

    def stop(self):
        stop_proc(self.p, wait=30)
        self.group.kill_rest()
        stop_proc(self.dns)
        self.log.close()
        discard(self.dir)


MTAS = {"smtpmta": Smtpmta, "postfix": Postfix, "chasquid": Chasquid}


class LocalUser:
    """The Postfix `local` recipient: a system user whose home is under the bench folder."""
    home = None

    @classmethod
    def setup(cls, top):
        cls.home = os.path.join(top, "home-" + LOCAL_USER)
        os.mkdir(cls.home)
        try:
            pwd.getpwnam(LOCAL_USER)
            run(["usermod", "-d", cls.home, LOCAL_USER])
        except KeyError:
            run(["useradd", "--system", "--no-create-home", "--home-dir", cls.home,
                 "--shell", "/usr/sbin/nologin", LOCAL_USER])
            CLEANUPS.append(lambda: run(["userdel", LOCAL_USER], check=False))
        shutil.chown(cls.home, LOCAL_USER)
        os.chmod(cls.home, 0o755)


# ---------------------------------------------------------------- scenarios

def smtp_source(port, sessions, count, size, reuse, rcpt):
    cmd = [SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size), "-M", "client.localhost",
           "-f", SENDER, "-t", rcpt] + (["-d"] if reuse else []) + ["127.0.0.1:%d" % port]
    t0 = time.time()
    r = run(cmd, check=False)
    t1 = time.time()
    if r.returncode != 0:
        raise RuntimeError("smtp-source failed: " + r.stdout[-500:])
    return t0, t1


def strace_fsyncs(mta):
    pids = mta.group.pids()
    out = os.path.join(mta.dir, "strace.out")
    cmd = ["strace", "-f", "-c", "-o", out, "-e", "trace=" + FSYNC_CALLS]
    for p in pids:
        cmd += ["-p", str(p)]
    errf = open(os.path.join(mta.dir, "strace.err"), "wb")
    st = spawn(cmd, errf)
    time.sleep(1.0)  # let strace attach to every thread

    def finish():
        time.sleep(0.3)
        stop_proc(st, sig=signal.SIGINT)
        errf.close()
        calls = {}
        for line in open(out):
            f = line.split()
            if len(f) >= 5 and f[-1] in FSYNC_CALLS.split(",") and f[3].isdigit():
                calls[f[-1]] = int(f[3])
        return calls
    return finish


def throughput_run(kind, top, sc, trace=False, metrics=False, extra=None):
    """One run of a relay/local scenario on a fresh daemon; returns its figures. With
    `metrics`, smtpmta serves /metrics and it is scraped every second meanwhile; `extra` is
    appended to smtpmta's config."""
    count = sc["fsync_count"] if trace else sc["count"]
    sink = Sink(top)
    if metrics or extra:
        mta = MTAS[kind](top, sink.port, metrics=metrics, extra=extra or "")
    else:
        mta = MTAS[kind](top, sink.port)
    scraper = Scraper(mta.metrics_port) if metrics else None
    try:
        local = sc["local"]
        done = (lambda: count_files(mta.maildir_new) >= count) if local else (lambda: sink.messages() >= count)
        finish = strace_fsyncs(mta) if trace else None
        sampler = PssSampler(mta.group)
        sampler.start()
        cpu0 = mta.group.cpu_usec()
        t0, t1 = smtp_source(mta.port, sc["sessions"], count, sc["size"], sc["reuse"],
                             LOCAL_RCPT if local else getattr(mta, "relay_rcpt", REMOTE_RCPT))
        t2 = wait_until(done, 300, "%s to deliver %d messages" % (kind, count))
        wait_until(mta.queue_empty, 60, "%s queue to empty" % kind, every=0.05)
        cpu1 = mta.group.cpu_usec()
        peak = sampler.stop()
        if trace:
            calls = finish()
            return {"fsync_per_msg": sum(calls.get(c, 0) for c in DURABLE_CALLS) / count,
                    "sfr_per_msg": calls.get("sync_file_range", 0) / count, "fsync_calls": calls}
        out = {"accepted": count / (t1 - t0), "e2e": count / (t2 - t0),
               "cpu_us": (cpu1 - cpu0) / count, "pss_mib": peak / 1024}
        if extra and "[[dkim]]" in extra:
            mta.log.flush()
            out["signed"] = open(os.path.join(mta.dir, "smtpmta.log"), "rb").read().count(b" dkim signed ")
        return out
    finally:
        if scraper:
            scraper.stop()
        mta.stop()
        sink.close()


class Scraper(threading.Thread):
    """GET /metrics once a second, as a Prometheus server with a 1 s interval would."""

    def __init__(self, port, every=1.0):
        super().__init__(daemon=True)
        self.port, self.every, self.done, self.scrapes = port, every, threading.Event(), 0
        self.start()

    def run(self):
        while not self.done.wait(self.every):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    while s.recv(65536):
                        pass
                self.scrapes += 1
            except OSError as e:
                log("scrape failed: %s" % e)

    def stop(self):
        self.done.set()
        self.join(timeout=15)
        return self.scrapes


def metrics_run(kind, top, sc):
    """Issue 13's figures: what scraping /metrics every second costs an idle suite (CPU of
    all its processes over `idle_secs` with and without scrapes, a queue of `queued`
    deferred messages so the scrape has destinations to list), and the 1 KiB × 20 relay
    with metrics on and scraped against metrics off (alternating runs, median each)."""
    sink = Sink(top)
    mta = Smtpmta(top, sink.port, metrics=True)
    try:
        mta.stop_outbound()
        smtp_source(mta.port, 20, sc["queued"], 1024, True, "rcpt@deferred.example")
        wait_until(lambda: mta.held_all(sc["queued"]), 120, "queued messages in outbound-work", every=0.1)
        time.sleep(2.0)
        secs = sc["idle_secs"]
        c0 = mta.group.cpu_usec()
        time.sleep(secs)
        c1 = mta.group.cpu_usec()
        scraper = Scraper(mta.metrics_port)
        time.sleep(secs)
        scrapes = scraper.stop()
        c2 = mta.group.cpu_usec()
        idle = (c1 - c0) / (secs * 1e4)
        scraped = (c2 - c1) / (secs * 1e4)
        out = {"idle_cpu_pct": idle, "scraped_cpu_pct": scraped, "scrape_cost_pct": scraped - idle,
               "scrapes": scrapes}
    finally:
        mta.stop()
        sink.close()
    tp = dict(sc, kind="tp", local=False, reuse=False, sessions=20, size=1024)
    # Pairs of adjacent runs, and the median of the pairs' ratios: this machine's rate
    # drifts by more than the few per cent measured, and adjacent runs share the drift.
    on, off, ratios = [], [], []
    for i in range(sc["tp_reps"]):
        off.append(throughput_run("smtpmta", top, tp))
        on.append(throughput_run("smtpmta", top, tp, metrics=True))
        ratios.append(100.0 * on[-1]["e2e"] / off[-1]["e2e"])
        log("metrics pair %d: off %.0f msg/s %.0f µs/msg, on %.0f msg/s %.0f µs/msg (%.1f %%)"
            % (i + 1, off[-1]["e2e"], off[-1]["cpu_us"], on[-1]["e2e"], on[-1]["cpu_us"], ratios[-1]))
    out["e2e_metrics_off"] = statistics.median(r["e2e"] for r in off)
    out["e2e_metrics_on"] = statistics.median(r["e2e"] for r in on)
    out["metrics_on_pct"] = statistics.median(ratios)
    out["cpu_us_metrics_off"] = statistics.median(r["cpu_us"] for r in off)
    out["cpu_us_metrics_on"] = statistics.median(r["cpu_us"] for r in on)
    return out


def dkim_run(kind, top, sc):
    """Issue 15's figures: the 1 KiB × 20 relay with DKIM signing off, with an RSA-2048 key
    and with an Ed25519 key for the sender's domain (smtp-source's From), alternating runs,
    median each; and the CPU per message that signing adds. A run counts only when its log
    says every message was signed."""
    keys = {}
    for alg in ("rsa-sha256", "ed25519-sha256"):
        path = os.path.join(top, "dkim-%s.pem" % alg)
        if not os.path.exists(path):
            run([SMTPMTA, "dkim-keygen", "--domain", SENDER.split("@")[1], "--selector", "bench",
                 "--algorithm", alg, "--out", path])
        keys[alg] = '\n[[dkim]]\ndomain = "%s"\nselector = "bench"\nprivate_key = "%s"\nalgorithm = "%s"\n' % (
            SENDER.split("@")[1], path, alg)
    tp = dict(sc, kind="tp", local=False, reuse=False, sessions=20, size=1024)
    runs = {"off": [], "rsa": [], "ed25519": []}
    for _ in range(sc["tp_reps"]):
        runs["off"].append(throughput_run("smtpmta", top, tp))
        for name, alg in (("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")):
            r = throughput_run("smtpmta", top, tp, extra=keys[alg])
            if r["signed"] < tp["count"]:
                raise RuntimeError("%s: only %d of %d messages signed" % (alg, r["signed"], tp["count"]))
            runs[name].append(r)
    out = {}
    for name, rs in runs.items():
        out["e2e_dkim_" + name] = statistics.median(r["e2e"] for r in rs)
        out["cpu_us_dkim_" + name] = statistics.median(r["cpu_us"] for r in rs)
    for name in ("rsa", "ed25519"):
        out["dkim_%s_pct" % name] = 100.0 * out["e2e_dkim_" + name] / out["e2e_dkim_off"]
        out["dkim_%s_added_us" % name] = out["cpu_us_dkim_" + name] - out["cpu_us_dkim_off"]
    return out



# ---------------------------------------------------------------- round 3: milters, shaping

ACCEPT_MILTER = os.path.join(REPO, "scripts", "bench.d", "accept_milter.py")
# rspamd modules that need the network or redis (as crates/mta-testkit/src/milter.rs).
RSPAMD_OFF = ("rbl fuzzy_check asn dkim_signing arc spf dkim dmarc phishing surbl url_redirector "
              "multimap neural reputation replies ratelimit greylist history_redis dcc maillist "
              "mx_check rspamd_update").split()


class Rspamd:
    """Debian's rspamd as a milter (its proxy worker, scanning by itself) on a free port, its
    own config folder and cgroup (its CPU is counted apart from the MTA's); network modules
    off, DNS pointed at a closed port. The system's rspamd service is not touched."""

    def __init__(self, top):
        self.dir = tempfile.mkdtemp(prefix="rspamd-", dir=top)
        for sub in ("override.d", "local.d", "db", "run", "log"):
            os.mkdir(os.path.join(self.dir, sub))
        self.port, normal, controller = free_port(), free_port(), free_port()

        def write(name, text):
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        write("override.d/worker-normal.inc", 'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % normal)
        write("override.d/worker-controller.inc", 'bind_socket = "127.0.0.1:%d";\ncount = 1;\n' % controller)
        # One proxy process per core: the scanning is the proxy's own (self_scan).
        write("override.d/worker-proxy.inc",
              'bind_socket = "127.0.0.1:%d";\nmilter = yes;\ntimeout = 120s;\nself_scan = yes;\n'
              'count = %d;\nspam_header = "X-Spam";\nupstream "local" {\n  default = yes;\n'
              '  self_scan = yes;\n}\n' % (self.port, os.cpu_count() or 1))
        write("override.d/logging.inc", 'type = "file";\nfilename = "%s/log/rspamd.log";\nlevel = "warning";\n'
              % self.dir)
        write("tld.dat", "com\norg\nnet\ntest\nexample\nlocalhost\n")
        write("local.d/options.inc", 'dns {\n  nameserver = ["127.0.0.1:9"];\n  timeout = 1s;\n'
              '  retransmits = 1;\n}\nurl_tld = "%s/tld.dat";\n' % self.dir)
        write("local.d/milter_headers.conf", "extended_spam_headers = true;\nskip_local = false;\n"
              "skip_authenticated = false;\n")
        for m in RSPAMD_OFF:
            write("local.d/%s.conf" % m, "enabled = false;\n")
        self.group = Group("rspamd")
        self.out = open(os.path.join(self.dir, "stdout.txt"), "wb")
        self.p = spawn(["rspamd", "-f", "-i", "-u", "root", "-g", "root", "-c", "/etc/rspamd/rspamd.conf",
                        "--var=LOCAL_CONFDIR=" + self.dir, "--var=DBDIR=%s/db" % self.dir,
                        "--var=RUNDIR=%s/run" % self.dir, "--var=LOGDIR=%s/log" % self.dir],
                       self.out, cgroup=self.group, start_new_session=True)
        self.group.root_pids = [self.p.pid]
        wait_port(self.port, banner=False, timeout=120)

    def address(self):
        return "inet:127.0.0.1:%d" % self.port

    def stop(self):
        stop_proc(self.p, wait=10)
        self.group.kill_rest()
        self.out.close()
        discard(self.dir)


class AcceptMilter:
    """scripts/bench.d/accept_milter.py on a free port, in its own cgroup."""

    def __init__(self, top):
        self.port = free_port()
        self.group = Group("accept-milter")
        self.p = spawn([sys.executable, ACCEPT_MILTER, str(self.port)], subprocess.DEVNULL, cgroup=self.group)
        self.group.root_pids = [self.p.pid]
        wait_port(self.port, banner=False)

    def address(self):
        return "inet:127.0.0.1:%d" % self.port

    def stop(self):
        stop_proc(self.p)
        self.group.kill_rest()


def milter_config(kind, address):
    if kind == "postfix":
        return ("smtpd_milters = %s\nmilter_protocol = 6\nmilter_default_action = tempfail\n"
                "milter_connect_timeout = 5s\nmilter_command_timeout = 30s\n"
                "milter_content_timeout = 120s\n" % address)
    return ('\n[[milter]]\nname = "bench"\naddress = "%s"\ndefault_action = "tempfail"\n'
            'connect_timeout = "5s"\ncommand_timeout = "30s"\ncontent_timeout = "120s"\n' % address)


def milter_run(kind, top, sc):
    """Issue 25's figures: relay 1 KiB × 20 without a milter, with a milter that accepts at
    connect (smtpmta only: the cost of our milter client) and with rspamd as the milter
    (`[[milter]]` / Postfix's `smtpd_milters`), alternating runs, median each; the MTA's CPU
    per message and rspamd's, apart."""
    tp = dict(sc, kind="tp", local=False, reuse=False, sessions=20, size=1024)
    variants = ("off", "accept", "rspamd") if kind == "smtpmta" else ("off", "rspamd")
    runs = {v: [] for v in variants}
    rspamd_cpu, accept_cpu = [], []
    for _ in range(sc["tp_reps"]):
        for v in variants:
            if v == "off":
                runs[v].append(throughput_run(kind, top, tp))
                continue
            milter = Rspamd(top) if v == "rspamd" else AcceptMilter(top)
            try:
                cpu0 = milter.group.cpu_usec()
                runs[v].append(throughput_run(kind, top, tp, extra=milter_config(kind, milter.address())))
                (rspamd_cpu if v == "rspamd" else accept_cpu).append(
                    (milter.group.cpu_usec() - cpu0) / tp["count"])
            finally:
                milter.stop()
    out = {}
    for v, rs in runs.items():
        out["e2e_milter_" + v] = statistics.median(r["e2e"] for r in rs)
        out["cpu_us_milter_" + v] = statistics.median(r["cpu_us"] for r in rs)
    out["rspamd_cpu_us"] = statistics.median(rspamd_cpu)
    out["milter_rspamd_pct"] = 100.0 * out["e2e_milter_rspamd"] / out["e2e_milter_off"]
    if "accept" in runs:
        out["accept_milter_cpu_us"] = statistics.median(accept_cpu)
        out["milter_accept_pct"] = 100.0 * out["e2e_milter_accept"] / out["e2e_milter_off"]
    return out


SHAPED_DOMAIN = REMOTE_RCPT.split("@")[1]


def shaping_rule(rate=None, connections=None):
    rule = '\n[[outbound.shaping]]\nname = "bench"\nmatch = ["%s"]\n' % SHAPED_DOMAIN
    if connections:
        rule += "connection_limit = %d\n" % connections
    if rate:
        rule += 'max_message_rate = "%s"\n' % rate
    return rule


def queued_drain(top, sc, extra, samples=None):
    """`count` messages queued with outbound stopped, then the outbound started: the drain's
    figures, and (with `samples`) the sink's count every 0.5 s appended as (seconds, count)."""
    count = sc["count"]
    sink = Sink(top)
    mta = Smtpmta(top, sink.port, extra=extra)
    try:
        mta.stop_outbound()
        smtp_source(mta.port, 20, count, 1024, True, REMOTE_RCPT)
        wait_until(lambda: mta.held_all(count), 600, "%d messages queued" % count, every=0.2)
        cpu0 = mta.group.cpu_usec()
        t0 = time.time()
        mta.start_outbound()
        if samples is None:
            t1 = wait_until(lambda: sink.messages() >= count, 900, "the drain")
        else:
            while sink.messages() < count:
                if time.time() - t0 > 900:
                    raise RuntimeError("the shaped drain did not end in 900 s")
                samples.append((time.time() - t0, sink.messages()))
                time.sleep(0.5)
            t1 = time.time()
            samples.append((t1 - t0, count))
        wait_until(mta.queue_empty, 120, "queue to empty", every=0.05)
        return {"e2e": count / (t1 - t0), "cpu_us": (mta.group.cpu_usec() - cpu0) / count}
    finally:
        mta.stop()
        sink.close()


def shaping_rate_run(kind, top, sc):
    """Issue 26's rate accuracy: `count` messages to one site limited to `rate`, queued with
    outbound stopped, then drained; the sink's count per whole minute from the start (the
    first minute includes the limiter's burst of a tenth of the rate), the steady rate over
    the minutes after the first, and the CPU per message against the same drain without a
    limit."""
    per_min = float(sc["rate"].split("/")[0])
    samples = []
    limited = queued_drain(top, sc, shaping_rule(rate=sc["rate"]), samples)
    free = queued_drain(top, sc, "")

    def at(t):  # the sink's count at t seconds (last sample at or before t)
        return max([n for s, n in samples if s <= t] or [0])
    minutes = int(samples[-1][0] // 60)
    counts = [at(60 * (m + 1)) - at(60 * m) for m in range(minutes)]
    out = {"shaped_minutes": " ".join(str(c) for c in counts), "shaped_first_min": counts[0] if counts else 0,
           "cpu_us_shaped": limited["cpu_us"], "cpu_us_unshaped": free["cpu_us"],
           "e2e_unshaped": free["e2e"]}
    if minutes >= 2:
        steady = (at(60 * minutes) - at(60)) / (minutes - 1)
        out["shaped_per_min"] = steady
        out["shaped_error_pct"] = 100.0 * (steady - per_min) / per_min
        out["shaped_worst_min_pct"] = max(abs(c - per_min) for c in counts[1:]) * 100.0 / per_min
    return out


def shaping_drain_run(kind, top, sc):
    """Issue 26: the drain of `count` queued messages without shaping rules and with the
    shipped starter set (etc/shaping.toml) plus a rule for the sink's domain whose limits
    never bind (connection limit above the sessions, a rate far above the drain's), so the
    difference is the cost of the checks; alternating runs, median each."""
    starter = open(os.path.join(REPO, "etc", "shaping.toml")).read()
    rules = starter + shaping_rule(rate="1000000/min", connections=1000)
    off, on = [], []
    for _ in range(sc["tp_reps"]):
        off.append(queued_drain(top, sc, ""))
        on.append(queued_drain(top, sc, rules))
    out = {"e2e_drain_rules_off": statistics.median(r["e2e"] for r in off),
           "e2e_drain_rules_on": statistics.median(r["e2e"] for r in on),
           "cpu_us_drain_rules_off": statistics.median(r["cpu_us"] for r in off),
           "cpu_us_drain_rules_on": statistics.median(r["cpu_us"] for r in on)}
    out["drain_rules_pct"] = 100.0 * out["e2e_drain_rules_on"] / out["e2e_drain_rules_off"]
    return out


# ---------------------------------------------------------------- round 3: the fleet (issue 27)

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
PY_SINK = os.path.join(REPO, "tests", "support", "smtp_sink.py")
RELAY_ALIAS = "relay@localhost"   # an alias to REMOTE_RCPT: untrusted clients may send to it


class Redis:
    """Debian's redis-server on a free loopback port with its own folder (no persistence),
    stopped by pid; its command count (INFO commandstats, without INFO itself) and its CPU
    (/proc/<pid>/stat utime + stime)."""

    def __init__(self, top):
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=top)
        self.port = free_port()
        self.out = open(os.path.join(self.dir, "redis.out"), "wb")
        self.p = spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                        "--protected-mode", "no", "--save", "", "--appendonly", "no",
                        "--daemonize", "no", "--dir", self.dir], self.out)
        wait_until(lambda: self.cli("PING").strip() == "PONG", 30, "redis-server to answer", every=0.05)

    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def cli(self, *args):
        return run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)] + list(args), check=False).stdout

    def calls(self):
        total = 0
        for line in self.cli("INFO", "commandstats").splitlines():
            m = re.match(r"cmdstat_([a-z|]+):calls=(\d+)", line)
            if m and m.group(1) != "info":
                total += int(m.group(2))
        return total

    def cpu_usec(self):
        f = open("/proc/%d/stat" % self.p.pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) * 1_000_000 // os.sysconf("SC_CLK_TCK")

    def stop(self):
        stop_proc(self.p)
        self.out.close()
        discard(self.dir)


class NoDns:
    """dnsmasq on a free loopback port answering NXDOMAIN for every name, so the SPF, DKIM
    and DMARC checks of an untrusted client's mail end at once (no upstream is asked)."""

    def __init__(self, top):
        self.port = free_port()
        self.out = open(os.path.join(top, "nodns-%d.out" % self.port), "wb")
        self.p = spawn(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                        "--bind-interfaces", "--listen-address=127.0.0.1", "--port=%d" % self.port,
                        "--local=/#/"], self.out)
        time.sleep(0.3)

    def stop(self):
        stop_proc(self.p)
        self.out.close()


def cluster_config(redis, node):
    return '\n[cluster]\nredis = "%s"\nnode = "%s"\n' % (redis.url(), node)


def task_counter(mta, task, name):
    for t in mta.con("show tasks", json_out=True)["tasks"]:
        if t["name"] == task:
            return dict((k, v) for k, v in t["counters"]).get(name, 0)
    return 0


def cluster_on_off(top, sc, redis):
    """(a) one node, relay 1 KiB × 20, [cluster] on against off, the same non-binding
    shaping rule either way (so that with [cluster] each delivery asks Redis); alternating
    runs, median each; Redis's commands and CPU over the runs with the cluster on."""
    rule = shaping_rule(rate="1000000/min", connections=1000)
    tp = dict(size=1024, sessions=20, reuse=False, local=False, count=sc["count"])
    runs = {"off": [], "on": []}
    calls = cpu = 0
    for rep_ in range(sc["tp_reps"]):
        for v in ("off", "on"):
            extra = rule + (cluster_config(redis, "bench1") if v == "on" else "")
            c0, u0 = redis.calls(), redis.cpu_usec()
            runs[v].append(throughput_run("smtpmta", top, tp, extra=extra))
            if v == "on":
                calls += redis.calls() - c0
                cpu += redis.cpu_usec() - u0
            log("cluster (a) rep %d %-3s e2e=%.0f msg/s" % (rep_ + 1, v, runs[v][-1]["e2e"]))
    n = sc["count"] * sc["tp_reps"]
    out = {"e2e_cluster_off": statistics.median(r["e2e"] for r in runs["off"]),
           "e2e_cluster_on": statistics.median(r["e2e"] for r in runs["on"]),
           "cpu_us_cluster_off": statistics.median(r["cpu_us"] for r in runs["off"]),
           "cpu_us_cluster_on": statistics.median(r["cpu_us"] for r in runs["on"]),
           "redis_calls_per_delivered": calls / n, "redis_cpu_ms_per_1000": cpu / n}
    out["cluster_on_pct"] = 100.0 * out["e2e_cluster_on"] / out["e2e_cluster_off"]
    return out


def most_at_once(intervals):
    events = sorted([(o, 1) for o, c in intervals] + [(c, -1) for o, c in intervals],
                    key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def cluster_fleet(top, sc, redis):
    """(b) three nodes on this machine, each under relay 1 KiB × 20 at once, sharing a
    connection limit and a message rate to the one sink (tests/support/smtp_sink.py with
    its connection log): the fleet's total rate, the sink's most connections at once and
    its most messages in any 10 s, against the limits."""
    limit, rate = sc["fleet_connections"], sc["fleet_rate"]
    per_node = sc["fleet_count"]
    folder = tempfile.mkdtemp(prefix="pysink-", dir=top)
    conn_log = os.path.join(folder, "conns.jsonl")
    port = free_port()
    sink_out = open(os.path.join(top, "pysink-%d.out" % port), "wb")
    sink = spawn(["python3", PY_SINK, "127.0.0.1", str(port), os.path.join(folder, "msgs"),
                  "--conn-log", conn_log], sink_out)
    nodes = []
    try:
        wait_port(port)
        extra = shaping_rule(rate=rate, connections=limit)
        for i in range(3):
            # One machine: only the first node keeps the default submission ports.
            nodes.append(Smtpmta(top, port, extra=extra + cluster_config(redis, "bench%d" % (i + 1)),
                                 inbound="submission_listen = []\nsubmissions_listen = []"))
        total = 3 * per_node
        saved = lambda: sum(1 for f in os.listdir(os.path.join(folder, "msgs")) if f.endswith(".env"))
        t0 = time.time()
        loads = [threading.Thread(target=smtp_source, args=(m.port, 20, per_node, 1024, False, REMOTE_RCPT))
                 for m in nodes]
        for t in loads:
            t.start()
        for t in loads:
            t.join()
        t1 = wait_until(lambda: saved() >= total, 900, "the fleet to deliver %d messages" % total, every=0.2)
        conns = [json.loads(l) for l in open(conn_log) if l.strip()]
        at = sorted(json.load(open(os.path.join(folder, "msgs", f)))["mail_at"]
                    for f in os.listdir(os.path.join(folder, "msgs")) if f.endswith(".env"))
        window = [sum(1 for u in at[i:] if u < t + 10.0) for i, t in enumerate(at)]
        count, period = rate.split("/")
        per_10s = float(count) * 10.0 / {"s": 1, "min": 60, "h": 3600}[period]
        return {"fleet_total_rate": total / (t1 - t0), "fleet_most_connections": most_at_once(
                    [(c["open"], c["close"]) for c in conns if not c.get("refused")]),
                "fleet_connection_limit": limit, "fleet_most_in_10s": max(window),
                "fleet_limit_10s": "%.0f + burst %d" % (per_10s, max(1, int(count) // 10))}
    finally:
        for m in nodes:
            m.stop()
        stop_proc(sink)
        sink_out.close()
        discard(folder)


def cluster_clients(top, sc, redis):
    """(c) one node with a shared per-client message rate (not binding) and the default
    shared max_connections_per_client; the load's client (127.0.0.1) is not trusted, so it
    sends to an alias of the remote recipient: Redis round trips per accepted message
    (isesctl's, for the client limits), per delivered message (osesctl's, for the
    shaping), all commands per message and Redis CPU per 1,000 messages."""
    dns = NoDns(top)
    sink = Sink(top)
    extra = (shaping_rule(rate="1000000/min", connections=1000) + cluster_config(redis, "bench1") +
             '\n[dns]\nnameservers = ["127.0.0.1:%d"]\ntimeout = "1s"\n' % dns.port)
    mta = Smtpmta(top, sink.port, extra=extra, trusted="127.0.0.2/32",
                  inbound='max_message_rate_per_client = "1000000/min"',
                  directory_extra='\n[aliases]\n"%s" = ["%s"]\n' % (RELAY_ALIAS, REMOTE_RCPT))
    try:
        count = sc["count"]
        c0, u0 = redis.calls(), redis.cpu_usec()
        smtp_source(mta.port, 20, count, 1024, False, RELAY_ALIAS)
        wait_until(lambda: sink.messages() >= count, 300, "%d messages at the sink" % count)
        wait_until(mta.queue_empty, 60, "queue to empty", every=0.05)
        calls, cpu = redis.calls() - c0, redis.cpu_usec() - u0
        return {"redis_calls_per_accepted": task_counter(mta, "isesctl", "redis_limit_calls") / count,
                "redis_limit_calls_per_delivered": task_counter(mta, "osesctl", "redis_limit_calls") / count,
                "redis_calls_per_msg_clients": calls / count, "redis_cpu_ms_per_1000_clients": cpu / count}
    finally:
        mta.stop()
        sink.close()
        dns.stop()


def cluster_run(kind, top, sc):
    """Issue 27's figures: (a) [cluster] on against off on one node, (b) three nodes under
    shared limits, (c) Redis's cost per accepted and delivered message with per-client
    limits on; one redis-server for all three, stopped by pid at the end."""
    redis = Redis(top)
    try:
        out = cluster_on_off(top, sc, redis)
        out.update(cluster_fleet(top, sc, redis))
        out.update(cluster_clients(top, sc, redis))
        return out
    finally:
        redis.stop()


def message(i, size):
    body = (("x" * 76 + "\r\n") * (size // 78 + 1))[:size]
    body = body[: body.rfind("\r\n") + 2] if "\r\n" in body else body + "\r\n"
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: latency %d\r\nMessage-ID: <lat%d@client.localhost>\r\n\r\n"
            % (SENDER, REMOTE_RCPT, i, i) + body).encode()


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        while True:
            while b"\r\n" not in self.buf:
                d = self.s.recv(65536)
                if not d:
                    raise RuntimeError("connection closed")
                self.buf += d
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line

    def cmd(self, c, expect):
        self.s.sendall(c)
        r = self.reply()
        if not r.startswith(expect):
            raise RuntimeError("%r -> %r" % (c, r))
        return r

    def transaction(self, data, timed=False, rcpt=REMOTE_RCPT):
        self.cmd(b"MAIL FROM:<%s>\r\n" % SENDER.encode(), b"250")
        self.cmd(b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"250")
        self.cmd(b"DATA\r\n", b"354")
        self.s.sendall(data)
        t0 = time.perf_counter()
        self.cmd(b".\r\n", b"250")
        return time.perf_counter() - t0


FLAME_DIR = None
FLAMED = set()


def perf_profile(mta, kind):
    """With --flame, the first time for `kind`: perf record (call graphs) of the MTA's processes
    until the returned finish() runs, which draws DIR/flamegraph-serial-<kind>.svg."""
    if not FLAME_DIR or kind in FLAMED:
        return lambda: None
    FLAMED.add(kind)
    data = os.path.join(os.path.dirname(mta.dir), "flame-%s-%d.data" % (kind, os.getpid()))
    pids = ",".join(str(p) for p in mta.group.pids())
    cmd = ["perf", "record", "-q", "-F", "997", "--call-graph", "dwarf,16384", "-o", data, "-p", pids]
    errf = open(os.path.join(mta.dir, "flame.err"), "wb")
    perf = spawn(cmd, errf)
    time.sleep(1.0)

    def finish():
        stop_proc(perf, sig=signal.SIGINT, wait=120)
        errf.close()
        out = os.path.join(FLAME_DIR, "flamegraph-serial-%s.svg" % kind)
        script = subprocess.run(["perf", "script", "-i", data], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL).stdout
        folded = subprocess.run(["inferno-collapse-perf"], input=script, stdout=subprocess.PIPE).stdout
        svg = subprocess.run(["inferno-flamegraph", "--minwidth", "0.3", "--title",
                              "%s: serial, 1 session, 1 KiB (every process of the MTA)" % kind],
                             input=folded, stdout=subprocess.PIPE).stdout
        open(out, "wb").write(svg)
        log("flame graph: %s (%d bytes)" % (out, len(svg)))
    return finish


def latency_run(kind, top, sc):
    count = sc["count"]
    sink = Sink(top)
    mta = MTAS[kind](top, sink.port)
    try:
        flame = perf_profile(mta, kind)
        sampler = PssSampler(mta.group)
        sampler.start()
        cpu0 = mta.group.cpu_usec()
        t0 = time.time()
        c = Client(mta.port)
        c.reply()
        c.cmd(b"EHLO client.localhost\r\n", b"250")
        lat = [c.transaction(message(i, sc["size"])) for i in range(count)]
        c.cmd(b"QUIT\r\n", b"221")
        t1 = time.time()
        t2 = wait_until(lambda: sink.messages() >= count, 300, "sink")
        wait_until(mta.queue_empty, 60, "queue to empty", every=0.05)
        cpu1 = mta.group.cpu_usec()
        flame()
        lat.sort()
        return {"p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
                "accepted": count / (t1 - t0), "e2e": count / (t2 - t0),
                "cpu_us": (cpu1 - cpu0) / count, "pss_mib": sampler.stop() / 1024}
    finally:
        mta.stop()
        sink.close()


def perf_sched_events(data):
    """(time, event, fields) of a `perf record` file: sched_wakeup / sched_switch / sync syscalls."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,event,trace"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", line)
        if m:
            yield int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)


def wakeups_run(kind, top, sc):
    """Between the final "." and the 250 of one message (one session, one message at a time,
    the pipeline quiet in between): how many times a thread of the MTA is woken, how many
    times one sleeps on the device (D state), and the fsync/fdatasync calls per message,
    counted by `perf record` on the scheduler and syscall tracepoints (issue 30)."""
    if not shutil.which("perf"):
        raise RuntimeError("the wakeups scenario needs perf: apt-get install linux-perf")
    count = sc["count"]
    sink = Sink(top)
    mta = MTAS[kind](top, sink.port)
    # Beside the MTA's folder, not in it: stopping the MTA removes its folder.
    data = os.path.join(top, "sched-%s-%d.data" % (kind, os.getpid()))
    tids, stop = set(), threading.Event()

    def sample_tids():
        while not stop.is_set():
            for pid in mta.group.pids():
                try:
                    tids.update(int(t) for t in os.listdir("/proc/%d/task" % pid))
                except OSError:
                    pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample_tids, daemon=True)
    sampler.start()
    perf = None
    try:
        c = Client(mta.port)
        c.reply()
        c.cmd(b"EHLO client.localhost\r\n", b"250")
        warm = 20
        for i in range(warm):
            c.transaction(message(i, sc["size"]))
        wait_until(lambda: sink.messages() >= warm, 60, "warm-up delivered")
        errf = open(data + ".err", "wb")
        perf = spawn(["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-a", "-o", data, "-e",
                      "sched:sched_wakeup,sched:sched_switch,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"],
                     errf)
        time.sleep(1.5)  # perf is recording
        windows = []
        for i in range(warm, warm + count):
            c.cmd(b"MAIL FROM:<%s>\r\n" % SENDER.encode(), b"250")
            c.cmd(b"RCPT TO:<%s>\r\n" % REMOTE_RCPT.encode(), b"250")
            c.cmd(b"DATA\r\n", b"354")
            c.s.sendall(message(i, sc["size"]))
            t0 = time.monotonic()
            c.cmd(b".\r\n", b"250")
            windows.append((t0, time.monotonic()))
            wait_until(lambda: sink.messages() >= i + 1, 60, "message %d delivered" % i, every=0.001)
            time.sleep(0.02)  # the delivery's own commits finish: the next window is quiet
        c.cmd(b"QUIT\r\n", b"221")
        stop_proc(perf, sig=signal.SIGINT, wait=60)
        perf = None
        errf.close()
    finally:
        stop.set()
        if perf:
            stop_proc(perf, sig=signal.SIGINT)
        mta.stop()
        sink.close()
    wakes, dwaits, syncs = [0] * len(windows), [0] * len(windows), [0] * len(windows)
    chains = [[] for _ in windows]
    w = 0
    for tid, t, event, trace in perf_sched_events(data):
        while w < len(windows) and t > windows[w][1]:
            w += 1
        if w == len(windows):
            break
        if t < windows[w][0]:
            continue
        if event == "sched:sched_wakeup":
            m = re.search(r"comm=(.*) pid=(\d+)", trace)
            if m and int(m.group(2)) in tids:
                wakes[w] += 1
                chains[w].append(m.group(1))
        elif event == "sched:sched_switch":
            m = re.search(r"prev_pid=(\d+) .*prev_state=(\S+)", trace)
            if m and int(m.group(1)) in tids and m.group(2).startswith("D"):
                dwaits[w] += 1
        elif event.startswith("syscalls:sys_enter_f") and tid in tids:
            syncs[w] += 1
    order = sorted(range(len(windows)), key=lambda k: wakes[k])
    median = order[len(order) // 2]
    for f in (data, data + ".err"):
        if os.path.exists(f):
            os.remove(f)
    log("%s wake-ups, the median message's: %s" % (kind, " → ".join(chains[median])))
    return {"wakeups": statistics.median(wakes), "device_waits": statistics.median(dwaits),
            "syncs_per_msg_serial": sum(syncs) / len(windows),
            "wake_chain": " → ".join(chains[median])}


def drain_run(kind, top, sc):
    count = sc["count"]
    sink = Sink(top)
    mta = Smtpmta(top, sink.port) if kind == "smtpmta" else Postfix(top, sink.port, defer=True)
    try:
        mta.stop_outbound()
        t0, t1 = smtp_source(mta.port, sc["sessions"], count, sc["size"], sc["reuse"], REMOTE_RCPT)
        wait_until(lambda: mta.held_all(count), 600, "%d messages queued" % count, every=0.2)
        sampler = PssSampler(mta.group)
        sampler.start()
        cpu0 = mta.group.cpu_usec()
        t2 = time.time()
        mta.start_outbound()
        t3 = wait_until(lambda: sink.messages() >= count, 600, "the drain")
        wait_until(mta.queue_empty, 120, "queue to empty", every=0.05)
        cpu1 = mta.group.cpu_usec()
        return {"accepted": count / (t1 - t0), "e2e": count / (t3 - t2),
                "cpu_us": (cpu1 - cpu0) / count, "pss_mib": sampler.stop() / 1024}
    finally:
        mta.stop()
        sink.close()


def idle_run(kind, top, sc):
    n = sc["count"]
    sink = Sink(top)
    mta = MTAS[kind](top, sink.port)
    socks = []
    try:
        sel = selectors.DefaultSelector()
        for i in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", mta.port))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        bannered, deadline = set(), time.time() + 30
        while len(bannered) < n and time.time() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    d = key.fileobj.recv(512)
                except OSError:
                    d = b""
                if d.startswith(b"220"):
                    bannered.add(key.fileobj)
                sel.unregister(key.fileobj)
        time.sleep(1.0)
        pss = mta.group.pss_kib()
        nprocs = len(mta.group.pids())
        served = False
        try:
            c = Client(mta.port)
            c.s.settimeout(10)
            c.reply()
            c.cmd(b"EHLO client.localhost\r\n", b"250")
            c.transaction(message(0, 1024))
            c.cmd(b"QUIT\r\n", b"221")
            served = True
        except (OSError, RuntimeError) as e:
            log("%s: new client not served: %s" % (kind, e))
        return {"connections": len(bannered), "pss_mib": pss / 1024,
                "served": served, "processes": nprocs}
    finally:
        for s in socks:
            s.close()
        mta.stop()
        sink.close()


# ---------------------------------------------------------------- TLS (issue 11)

# Our own TLS load client (scripts/bench.d/tls-load, a workspace binary: one thread, rustls,
# no session resumption); smtp-source has no TLS.
TLS_LOAD = os.path.join(REL, "tls-load")


def bench_certificate(top):
    """One certificate for both MTAs: ECDSA P-256 (certbot's default key type, and the kind
    smtpmta makes for itself), self-signed for bench.localhost."""
    cert, key = os.path.join(top, "tls-cert.pem"), os.path.join(top, "tls-key.pem")
    if not os.path.exists(cert):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=bench.localhost",
             "-addext", "subjectAltName=DNS:bench.localhost"])
        os.chmod(key, 0o644)  # Postfix's smtpd and smtpmta's isesctl read it unprivileged
    return cert, key


def tls_load(mode, port, count, sessions, extra=()):
    if not os.path.exists(TLS_LOAD):
        raise RuntimeError("%s is missing: build it with cargo build --release --workspace --bins"
                           % TLS_LOAD)
    r = run([TLS_LOAD, mode, "127.0.0.1", str(port), "--count", str(count),
             "--sessions", str(sessions)] + list(extra), check=False, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("tls-load %s failed: %s" % (mode, r.stdout[-800:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def tls_run(kind, top, sc):
    """1 KiB × 20 sessions, each with STARTTLS (our own client), relayed to the sink; then,
    on the same idle daemon, `hs_count` sessions that only do STARTTLS and QUIT, and as many
    plaintext ones (connect, EHLO, QUIT): the difference of the MTA's CPU per session is
    what the handshake costs it."""
    count = sc["count"]
    sink = Sink(top)
    mta = MTAS[kind](top, sink.port, tls=bench_certificate(top))
    try:
        sampler = PssSampler(mta.group)
        sampler.start()
        cpu0 = mta.group.cpu_usec()
        r = tls_load("send", mta.port, count, sc["sessions"], ["--size", str(sc["size"])])
        if sum(v for k, v in r["tls"].items() if k != "plaintext") != count:
            raise RuntimeError("%s: not every session was TLS: %s" % (kind, r["tls"]))
        t2 = wait_until(lambda: sink.messages() >= count, 300, "%s to relay %d messages" % (kind, count))
        wait_until(mta.queue_empty, 60, "%s queue to empty" % kind, every=0.05)
        cpu1 = mta.group.cpu_usec()
        out = {"accepted": count / (r["t1"] - r["t0"]), "e2e": count / (t2 - r["t0"]),
               "cpu_us": (cpu1 - cpu0) / count, "pss_mib": sampler.stop() / 1024,
               "client_cpu_pct": r["client_cpu_pct"]}
        log("%s: TLS sessions %s" % (kind, r["tls"]))
        n = sc["hs_count"]
        time.sleep(1.0)
        for key, extra in (("hs_cpu_us", []), ("plain_cpu_us", ["--plain"])):
            c0 = mta.group.cpu_usec()
            tls_load("handshake", mta.port, n, sc["sessions"], extra)
            time.sleep(0.5)  # let the last sessions' ends be accounted
            out[key] = (mta.group.cpu_usec() - c0) / n
        out["handshake_cpu_us"] = out["hs_cpu_us"] - out["plain_cpu_us"]
        return out
    finally:
        mta.stop()
        sink.close()


def tls_idle_run(kind, top, sc):
    """`count` TLS sessions held open and idle after STARTTLS and EHLO: the PSS they add to
    the MTA's processes, per session; and whether a new client is still served."""
    n = sc["count"]
    sink = Sink(top)
    mta = MTAS[kind](top, sink.port, tls=bench_certificate(top))
    holder = None
    try:
        tls_load("handshake", mta.port, 20, 5)  # warm: the TLS code paths are mapped once
        time.sleep(1.0)
        pss0 = mta.group.pss_kib()
        holder = subprocess.Popen([TLS_LOAD, "idle", "127.0.0.1", str(mta.port),
                                   "--count", str(n), "--sessions", "50"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        STARTED.append(holder)
        ready = json.loads(holder.stdout.readline())
        time.sleep(1.0)
        pss1 = mta.group.pss_kib()
        nprocs = len(mta.group.pids())
        served = True
        try:
            tls_load("send", mta.port, 1, 1)
        except RuntimeError as e:
            log("%s: new TLS client not served: %s" % (kind, e))
            served = False
        held = ready["ready"]
        return {"tls_connections": held, "pss_mib": pss1 / 1024, "processes": nprocs, "served": served,
                "pss_per_session_kib": (pss1 - pss0) / max(held, 1)}
    finally:
        if holder:
            holder.stdin.close()
            stop_proc(holder)
        mta.stop()
        sink.close()


# ---------------------------------------------------------------- backlog (issue 10)

BACKLOG_DOMAIN = "backlog.example"
BACKLOG_RCPT = "rcpt@" + BACKLOG_DOMAIN
QUEUE_FILL = os.path.join(REL, "queue-fill")


def timed(fn):
    t0 = time.time()
    out = fn()
    return time.time() - t0, out


def first_mail(port, timeout=300):
    """Seconds (wall time) at which the daemon on port answered 220 + EHLO 250, and at which
    it accepted one message (MAIL, RCPT to the local user, DATA → 250); retried until then."""
    deadline, t_ehlo = time.time() + timeout, None
    while time.time() < deadline:
        c = None
        try:
            c = Client(port)
            c.s.settimeout(30)
            if not c.reply().startswith(b"220"):
                raise RuntimeError("no 220")
            c.cmd(b"EHLO client.localhost\r\n", b"250")
            t_ehlo = t_ehlo or time.time()
            c.transaction(message(0, 1024), rcpt=LOCAL_RCPT)
            t_mail = time.time()
            c.cmd(b"QUIT\r\n", b"221")
            return t_ehlo, t_mail
        except (OSError, RuntimeError):
            time.sleep(0.02)
        finally:
            if c:
                c.s.close()
    raise RuntimeError("port %d accepted no message within %ds" % (port, timeout))


def backlog_run(kind, top, sc):
    """One MTA with a deferred backlog (issue 10): its destination (the relay host) is a port
    nobody listens on until the drain, where a sink comes up on it."""
    n = sc["count"] if kind == "smtpmta" else sc["pf_count"]
    intake_n = sc["intake"]
    down = free_port()
    if kind == "smtpmta":
        mta = Smtpmta(top, down)
    else:
        # Retries an hour away, as queue-fill's --deferred-secs 3600 for smtpmta.
        mta = Postfix(top, down, extra="minimal_backoff_time = 3600s\nmaximal_backoff_time = 3600s\n")
    sink = None
    delivered = 0  # local messages expected in the Maildir so far
    out = {"load1": os.getloadavg()[0]}

    def settled():
        """Every local message delivered; nothing but the backlog queued."""
        if count_files(mta.maildir_new) < delivered:
            return False
        if kind == "smtpmta":
            c = mta.queue_counts()
            return sum(c.values()) == c.get("outbound-work", 0)
        return mta.queued() == mta.cnt("deferred")

    def intake():
        nonlocal delivered
        best = 0.0
        for _ in range(2):  # best of two, each on a settled daemon
            t0, t1 = smtp_source(mta.port, sc["sessions"], intake_n, sc["size"], False, LOCAL_RCPT)
            best = max(best, intake_n / (t1 - t0))
            delivered += intake_n
            wait_until(settled, 600, "%s: %d local messages delivered" % (kind, delivered), every=0.5)
        return best

    try:
        # (a) intake on the empty queue first, same daemon
        out["intake_empty"] = intake()
        log("backlog %s: empty-queue intake %.0f msg/s; filling %d" % (kind, out["intake_empty"], n))

        sampler = PssSampler(mta.group, every=1.0)
        sampler.start()
        if kind == "smtpmta":
            r = run([QUEUE_FILL, "--config", mta.cfg, "--count", str(n), "--to", BACKLOG_RCPT,
                     "--deferred-secs", "3600"], timeout=3600)
            fill = json.loads(r.stdout.strip().splitlines()[-1])
            out["fill_per_s"] = fill["per_second"]
            wait_until(lambda: mta.queue_counts().get("outbound-work", 0) >= n, 300,
                       "show queue to count the backlog", every=1.0)
        else:
            t0, _ = smtp_source(mta.port, sc["sessions"], n, sc["size"], True, BACKLOG_RCPT)
            t1 = wait_until(lambda: mta.held_all(n), 1800, "%d messages deferred" % n, every=1.0)
            out["fill_per_s"] = n / (t1 - t0)
        log("backlog %s: filled %d at %.0f msg/s" % (kind, n, out["fill_per_s"]))
        wait_until(settled, 300, "settled after the fill", every=0.5)
        time.sleep(5)

        # (b) idle CPU and (c) PSS with the backlog
        window = sc["idle_secs"]
        cpu0 = mta.group.cpu_usec()
        time.sleep(window)
        out["idle_cpu_pct"] = 100.0 * (mta.group.cpu_usec() - cpu0) / (window * 1e6)
        out["pss_mib"] = mta.group.pss_kib() / 1024
        out["processes"] = len(mta.group.pids())

        # (a) intake with the backlog
        out["intake_backlog"] = intake()
        out["intake_pct"] = 100.0 * out["intake_backlog"] / out["intake_empty"]

        # (e) the operator's views
        if kind == "smtpmta":
            views = (("view_queue_s", "show queue"), ("view_router_s", "tell router show queue"),
                     ("view_stat_s", "show stat mail"))
            for key, cmd in views:
                out[key], text = timed(lambda: mta.con(cmd))
                log("backlog %s: `%s` %.2f s:\n%s" % (kind, cmd, out[key], "\n".join(text.splitlines()[:12])))
        else:
            out["view_queue_s"], text = timed(lambda: run(["postqueue", "-c", mta.etc, "-p"], timeout=600).stdout)
            log("backlog postfix: postqueue -p %.2f s: %s" % (out["view_queue_s"], text.strip().splitlines()[-1]))
            if shutil.which("qshape"):
                out["view_router_s"], text = timed(
                    lambda: run(["qshape", "-c", mta.etc, "deferred"], timeout=600).stdout)
                log("backlog postfix: qshape deferred %.2f s:\n%s" % (out["view_router_s"], "\n".join(text.splitlines()[:4])))
        out["pss_peak_mib"] = sampler.stop() / 1024

        # (d) restart on the same data
        t0 = time.time()
        mta.halt()
        t1 = time.time()
        mta.start()
        t_ehlo, t_mail = first_mail(mta.port)
        delivered += 1
        out["stop_s"], out["restart_s"], out["restart_mail_s"] = t1 - t0, t_ehlo - t1, t_mail - t1
        log("backlog %s: stop %.2f s, 220+EHLO %.2f s, message accepted %.2f s after the start" % (
            kind, out["stop_s"], out["restart_s"], out["restart_mail_s"]))
        if kind == "smtpmta":
            wait_until(lambda: mta.queue_counts().get("outbound-work", 0) >= n, 300,
                       "the backlog queued again after the restart", every=1.0)
        else:
            wait_until(lambda: mta.cnt("deferred") >= n, 300, "the backlog deferred after the restart", every=1.0)
        wait_until(settled, 300, "settled after the restart", every=0.5)

        # (f) the destination comes back
        first = min(n, sc["drain_first"])
        sink = Sink(top, port=down)
        cpu0 = mta.group.cpu_usec()
        t0 = time.time()
        if kind == "smtpmta":
            # `route <relay host>` would route everything, but "127.0.0.1:PORT" is no Domain
            # (osesctl parses the argument as one): route the recipients' domain instead.
            # With 1,000,000 records the reply times out (the supervisor waits 5 s for osesctl)
            # while osesctl goes on routing: the drain is measured all the same.
            r = run([MTACON, "--config", mta.cfg, "route " + BACKLOG_DOMAIN], check=False, timeout=900)
        else:
            r = run(["postqueue", "-c", mta.etc, "-f"], check=False, timeout=900)
        t_cmd = time.time()
        out["route_s"] = t_cmd - t0
        out["route_ok"] = r.returncode == 0
        log("backlog %s: route/flush took %.2f s, exit %d: %s" % (kind, out["route_s"], r.returncode, r.stdout.strip()))
        seen, moved, deadline = 0, time.time(), time.time() + 1800
        while sink.messages() < first:  # bounded: 30 min in all, 3 min without progress
            now = time.time()
            if sink.count > seen:
                seen, moved = sink.count, now
            if now > deadline or now - moved > 180:
                raise RuntimeError("%s: drain stalled at %d of %d messages" % (kind, sink.count, first))
            time.sleep(0.05)
        t1 = time.time()
        out["drain"] = first / (t1 - t0)
        out["drain_after_cmd"] = first / (t1 - t_cmd)
        out["drain_cpu_us"] = (mta.group.cpu_usec() - cpu0) / first
        return out
    finally:
        mta.stop()
        if sink:
            sink.close()


def scenarios(quick):
    k = 1024
    if quick:
        return [
            dict(id="relay-1k-20", title="relay 1 KiB × 20 sessions, 1 msg/conn", kind="tp", size=k,
                 sessions=20, reuse=False, local=False, count=500, fsync_count=200),
            dict(id="local-1k-20", title="local Maildir 1 KiB × 20 sessions", kind="tp", size=k,
                 sessions=20, reuse=False, local=True, count=300, fsync_count=100),
        ]
    out = []
    for size, ssz, n, fn in ((k, "1 KiB", 5000, 1000), (100 * k, "100 KiB", 1000, 300)):
        for sessions in ((20, 100) if size == k else (20,)):
            for reuse in (False, True):
                out.append(dict(
                    id="relay-%s-%d-%s" % ("1k" if size == k else "100k", sessions, "d" if reuse else "1"),
                    title="relay %s × %d sessions, %s" % (ssz, sessions, "many msg/conn (-d)" if reuse else "1 msg/conn"),
                    kind="tp", size=size, sessions=sessions, reuse=reuse, local=False, count=n, fsync_count=fn))
    out.append(dict(id="local-1k-20", title="local Maildir 1 KiB × 20 sessions, 1 msg/conn", kind="tp",
                    size=k, sessions=20, reuse=False, local=True, count=5000, fsync_count=1000))
    out.append(dict(id="latency", title="serial latency: 1 session, 2,000 × 1 KiB", kind="lat", size=k, count=2000))
    out.append(dict(id="wakeups", title="between the final \".\" and the 250: wake-ups, device waits (1 session, 200 × 1 KiB, one at a time)",
                    kind="wake", reps=1, size=k, count=200))
    out.append(dict(id="drain", title="drain 20,000 × 1 KiB queued with outbound stopped", kind="drain",
                    size=k, sessions=20, reuse=True, count=20000))
    out.append(dict(id="idle", title="1,000 idle connections", kind="idle", count=1000))
    # issue 11: TLS, through our own client (scripts/bench.d/tls-load)
    out.append(dict(id="relay-tls-1k-20", title="relay 1 KiB × 20 sessions, STARTTLS, 1 msg/conn",
                    kind="tls", size=k, sessions=20, count=3000, hs_count=1000))
    out.append(dict(id="idle-tls-1000", title="1,000 idle TLS sessions (after STARTTLS + EHLO)",
                    kind="tlsidle", count=1000))
    # issue 13: smtpmta only
    out.append(dict(id="metrics", title="/metrics: scrape cost and relay with metrics on", kind="metrics", reps=1,
                    count=3000, queued=2000, idle_secs=20, tp_reps=7))
    # issue 15: smtpmta only
    out.append(dict(id="dkim", title="DKIM signing: relay 1 KiB × 20, off / RSA-2048 / Ed25519", kind="dkim",
                    reps=1, count=3000, tp_reps=3))
    # issue 25: relay with milters (none, accept-all, rspamd), smtpmta and Postfix
    out.append(dict(id="milter", title="milters: relay 1 KiB × 20, none / accept-all / rspamd", kind="milter",
                    reps=1, count=3000, tp_reps=3))
    # issue 26: smtpmta only
    out.append(dict(id="shaping-rate", title="shaping: 3,000 × 1 KiB queued to one site limited to 600/min",
                    kind="shaperate", reps=1, count=3000, rate="600/min"))
    # issue 27: smtpmta only; one local redis-server
    out.append(dict(id="cluster", title="cluster: relay 1 KiB × 20 with [cluster] on / off; 3 nodes under shared limits; Redis cost",
                    kind="cluster", reps=1, count=3000, tp_reps=3, fleet_count=1000,
                    fleet_connections=10, fleet_rate="3000/min"))
    out.append(dict(id="shaping-drain", title="shaping: drain 20,000 × 1 KiB queued, rules off / on",
                    kind="shapedrain", reps=1, count=20000, tp_reps=3))
    # issue 10; one run whatever --reps (~10-15 min); its own table and docs block
    out.append(dict(id="backlog", title="backlog", kind="backlog", reps=1, size=k, sessions=20,
                    count=1_000_000, pf_count=100_000, intake=5000, drain_first=100_000, idle_secs=10))
    return out


# ---------------------------------------------------------------- report

FIGS = [  # key, label, unit, better, target ratio
    ("accepted", "accepted msg/s", "", "higher", None),
    ("e2e", "end-to-end msg/s", "", "higher", 1.5),
    ("cpu_us", "CPU µs/msg", "", "lower", 1.0),
    ("pss_mib", "peak PSS MiB", "", "lower", None),
    ("fsync_per_msg", "fsyncs/msg (fsync, fdatasync)", "", "lower", None),
    ("sfr_per_msg", "sync_file_range/msg (not durable)", "", "lower", None),
    ("p50_ms", "p50 DATA-end→250 ms", "", "lower", None),
    ("wakeups", "wake-ups of MTA threads between \".\" and 250 (median)", "", "lower", None),
    ("device_waits", "device waits (D-state sleeps) between \".\" and 250 (median)", "", "lower", None),
    ("syncs_per_msg_serial", "fsync + fdatasync calls per message before its 250 (serial)", "", "lower", None),
    ("p99_ms", "p99 DATA-end→250 ms", "", "lower", 1.0),
    ("connections", "idle connections with banner", "", "higher", None),
    ("processes", "processes", "", "lower", None),
    ("served", "new client served", "", "higher", None),
    ("idle_cpu_pct", "idle CPU, % of a core, not scraped", "", "lower", None),
    ("scraped_cpu_pct", "idle CPU, % of a core, /metrics scraped every second", "", "lower", None),
    ("scrape_cost_pct", "cost of the scrapes, % of a core (target < 1 %)", "", "lower", None),
    ("e2e_metrics_off", "relay 1 KiB × 20 end-to-end msg/s, metrics off", "", "higher", None),
    ("e2e_metrics_on", "the same, metrics on and scraped every second", "", "higher", None),
    ("metrics_on_pct", "metrics on, % of off (median of adjacent pairs; target ≥ 97 %)", "", "higher", None),
    ("cpu_us_metrics_off", "CPU µs/msg, metrics off", "", "lower", None),
    ("cpu_us_metrics_on", "CPU µs/msg, metrics on and scraped every second", "", "lower", None),
    ("e2e_dkim_off", "end-to-end msg/s, signing off", "", "higher", None),
    ("e2e_dkim_rsa", "end-to-end msg/s, RSA-2048 signing", "", "higher", None),
    ("e2e_dkim_ed25519", "end-to-end msg/s, Ed25519 signing", "", "higher", None),
    ("dkim_rsa_pct", "RSA-2048 signing, % of off", "", "higher", None),
    ("dkim_ed25519_pct", "Ed25519 signing, % of off", "", "higher", None),
    ("cpu_us_dkim_off", "CPU µs/msg, signing off", "", "lower", None),
    ("dkim_rsa_added_us", "CPU µs/msg that RSA-2048 signing adds", "", "lower", None),
    ("dkim_ed25519_added_us", "CPU µs/msg that Ed25519 signing adds", "", "lower", None),
    ("e2e_milter_off", "end-to-end msg/s, no milter", "", "higher", None),
    ("e2e_milter_accept", "end-to-end msg/s, a milter that accepts at connect", "", "higher", None),
    ("e2e_milter_rspamd", "end-to-end msg/s, rspamd as the milter", "", "higher", None),
    ("milter_accept_pct", "accept-all milter, % of no milter", "", "higher", None),
    ("milter_rspamd_pct", "rspamd, % of no milter", "", "higher", None),
    ("cpu_us_milter_off", "MTA CPU µs/msg, no milter", "", "lower", None),
    ("cpu_us_milter_accept", "MTA CPU µs/msg, accept-all milter", "", "lower", None),
    ("cpu_us_milter_rspamd", "MTA CPU µs/msg, rspamd (the MTA's share)", "", "lower", None),
    ("rspamd_cpu_us", "rspamd's CPU µs/msg", "", "lower", None),
    ("accept_milter_cpu_us", "the accept-all milter's CPU µs/msg (Python)", "", "lower", None),
    ("shaped_minutes", "delivered in each whole minute from the start", "", "higher", None),
    ("shaped_first_min", "first minute (includes the burst: a tenth of the rate)", "", "higher", None),
    ("shaped_per_min", "steady rate after the first minute, msg/min", "", "higher", None),
    ("shaped_error_pct", "steady rate against the limit, %", "", "lower", None),
    ("shaped_worst_min_pct", "worst whole minute after the first, % off the limit", "", "lower", None),
    ("cpu_us_shaped", "CPU µs/msg, limited to the rate", "", "lower", None),
    ("cpu_us_unshaped", "CPU µs/msg, the same drain without a limit", "", "lower", None),
    ("e2e_unshaped", "the same drain without a limit, msg/s", "", "higher", None),
    ("e2e_drain_rules_off", "drain msg/s, no shaping rules", "", "higher", None),
    ("e2e_drain_rules_on", "drain msg/s, starter rules + a non-binding rule for the site", "", "higher", None),
    ("drain_rules_pct", "rules on, % of off", "", "higher", None),
    ("cpu_us_drain_rules_off", "drain CPU µs/msg, no rules", "", "lower", None),
    ("cpu_us_drain_rules_on", "drain CPU µs/msg, rules on", "", "lower", None),
    ("e2e_cluster_off", "relay 1 KiB × 20 end-to-end msg/s, [cluster] off", "", "higher", None),
    ("e2e_cluster_on", "the same, [cluster] on (a non-binding shared rule: Redis asked per delivery)", "", "higher", None),
    ("cluster_on_pct", "[cluster] on, % of off (target ≥ 90 %)", "", "higher", None),
    ("cpu_us_cluster_off", "MTA CPU µs/msg, [cluster] off", "", "lower", None),
    ("cpu_us_cluster_on", "MTA CPU µs/msg, [cluster] on", "", "lower", None),
    ("redis_calls_per_delivered", "Redis commands per delivered message (INFO commandstats: those inside scripts count too; shaping + background)", "", "lower", None),
    ("redis_cpu_ms_per_1000", "Redis CPU ms per 1,000 messages (relay, shaping shared)", "", "lower", None),
    ("fleet_total_rate", "3 nodes × 1 KiB × 20 under shared limits: total msg/s", "", "higher", None),
    ("fleet_most_connections", "the sink's most connections at once", "", "lower", None),
    ("fleet_connection_limit", "the shared connection_limit", "", "lower", None),
    ("fleet_most_in_10s", "the sink's most messages in any 10 s", "", "lower", None),
    ("fleet_limit_10s", "the shared max_message_rate per 10 s", "", "lower", None),
    ("redis_calls_per_accepted", "isesctl Redis round trips per accepted message (client limits shared)", "", "lower", None),
    ("redis_limit_calls_per_delivered", "osesctl Redis round trips per delivered message (shaping shared)", "", "lower", None),
    ("redis_calls_per_msg_clients", "Redis commands per message (commandstats, inside scripts too; client limits + shaping + background)", "", "lower", None),
    ("redis_cpu_ms_per_1000_clients", "Redis CPU ms per 1,000 messages (client limits + shaping)", "", "lower", None),
    ("client_cpu_pct", "TLS load client CPU, % of a core (100: client-bound)", "", "lower", None),
    ("hs_cpu_us", "CPU µs per session: STARTTLS + QUIT, no mail", "", "lower", None),
    ("plain_cpu_us", "CPU µs per session: plaintext EHLO + QUIT", "", "lower", None),
    ("handshake_cpu_us", "handshake CPU µs/session (the difference)", "", "lower", None),
    ("tls_connections", "idle TLS sessions held", "", "higher", None),
    ("pss_per_session_kib", "PSS added per idle TLS session, KiB", "", "lower", None),
]


def kinds_for(sc):
    """The MTAs a scenario compares: chasquid joins the relay throughput scenarios (it
    delivers locally only through an external MDA, and has no console for the others)."""
    if sc["kind"] == "tp" and not sc["local"] and shutil.which("chasquid"):
        return ("smtpmta", "postfix", "chasquid")
    if sc["kind"] in ("metrics", "dkim", "shaperate", "shapedrain", "cluster"):
        return ("smtpmta",)
    return ("smtpmta", "postfix")


def fmt(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    if 0 < v < 0.1:
        return "%.3f" % v
    return "%.2f" % v


def cell(vals):
    if not vals:
        return "—"
    if isinstance(vals[0], (bool, str)):
        return " / ".join(fmt(v) for v in vals)
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m)
    return "%s (%s..%s)" % (fmt(m), fmt(min(vals)), fmt(max(vals)))


def table(results, scs):
    rows = ["| scenario | figure | smtpmta | Postfix | smtpmta / Postfix | target | chasquid (no fsync) | smtpmta / chasquid |",
            "|---|---|---|---|---|---|---|---|"]
    for sc in scs:
        r = results.get(sc["id"], {})
        first = True
        for key, label, _, better, target in FIGS:
            a, b = r.get("smtpmta", {}).get(key, []), r.get("postfix", {}).get(key, [])
            c = r.get("chasquid", {}).get(key, [])
            if not a and not b:
                continue
            cratio = "—"
            if a and c and not isinstance(a[0], bool):
                ma, mc = statistics.median(a), statistics.median(c)
                cratio = "%.2f×" % (ma / mc) if mc else ("—" if not ma else "∞")
            ratio, tgt = "—", ""
            if a and b and not isinstance(a[0], bool):
                ma, mb = statistics.median(a), statistics.median(b)
                ratio = "%.2f×" % (ma / mb) if mb else ("—" if not ma else "∞")
                if key == "e2e" and sc["kind"] in ("tp", "drain"):
                    tgt = "≥ 1.5× " + ("✅" if mb and ma / mb >= 1.5 else "❌")
                elif key == "e2e" and sc["kind"] == "tls":
                    tgt = "≥ 2× " + ("✅" if mb and ma / mb >= 2 else "❌")
                elif target is not None and key != "e2e":
                    tgt = "≤ 1× " + ("✅" if mb and ma / mb <= target else "❌")
            if key == "e2e_milter_rspamd" and a and b:
                tgt = "≥ 2× " + ("✅" if ma / mb >= 2 else "❌")
            if key == "milter_accept_pct" and a:
                tgt = "≥ 90 % " + ("✅" if statistics.median(a) >= 90 else "❌")
            if key in ("shaped_error_pct", "shaped_worst_min_pct") and a:
                tgt = "within ± 2 % " + ("✅" if abs(statistics.median(a)) <= 2 else "❌")
            if key == "drain_rules_pct" and a:
                tgt = "within 10 % " + ("✅" if statistics.median(a) >= 90 else "❌")
            if sc["kind"] == "idle" and key == "pss_mib" and a:
                tgt = "≤ 64 MiB " + ("✅" if statistics.median(a) <= 64 else "❌")
            if sc["kind"] == "idle" and key == "connections" and a:
                tgt = "all %d %s" % (sc["count"], "✅" if min(a) >= sc["count"] else "❌")
            if sc["kind"] == "tlsidle" and key == "pss_per_session_kib" and a:
                tgt = "≤ 64 KiB " + ("✅" if statistics.median(a) <= 64 else "❌")
            if sc["kind"] in ("idle", "tlsidle") and key == "served" and a:
                tgt = "yes " + ("✅" if all(a) else "❌")
            rows.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                sc["title"] if first else "", label, cell(a), cell(b), ratio, tgt, cell(c), cratio))
            first = False
    return "\n".join(rows)


BACKLOG_ROWS = [  # key, figure (smtpmta / Postfix where they differ), target: (text, test on smtpmta's value)
    ("fill_per_s", "fill msg/s (smtpmta: `queue-fill`, store API, batches of 1,000; Postfix: "
     "`smtp-source -s 20 -d` until all are in `deferred/`)", None),
    ("intake_empty", "(a) intake 1 KiB × 20 sessions to the local user, empty queue, msg/s (best of 2)", None),
    ("intake_backlog", "(a) the same with the backlog, msg/s (best of 2)", None),
    ("intake_pct", "(a) intake with the backlog, % of empty", ("≥ 90 %", lambda v: v >= 90)),
    ("idle_cpu_pct", "(b) idle CPU with the backlog, % of a core (cgroup, 10 s)", ("< 1 %", lambda v: v < 1)),
    ("pss_mib", "(c) PSS of all processes with the backlog, idle, MiB", ("≤ 256 MiB", lambda v: v <= 256)),
    ("pss_peak_mib", "(c) peak PSS from the fill to the restart, MiB", None),
    ("processes", "processes (idle, with the backlog)", None),
    ("stop_s", "(d) stop: SIGTERM / `postfix stop` until every process is gone, s", None),
    ("restart_s", "(d) restart on the same data: s until 220 + EHLO 250", ("≤ 5 s", lambda v: v <= 5)),
    ("restart_mail_s", "(d) restart: s until a message is accepted (MAIL, RCPT, DATA 250)",
     ("≤ 5 s", lambda v: v <= 5)),
    ("view_queue_s", "(e) `show queue` / `postqueue -p`, s", ("≤ 1 s", lambda v: v <= 1)),
    ("view_router_s", "(e) `tell router show queue` / `qshape deferred`, s", ("≤ 1 s", lambda v: v <= 1)),
    ("view_stat_s", "(e) `show stat mail` / —, s", ("≤ 1 s", lambda v: v <= 1)),
    ("route_s", "(f) the command: `route %s` / `postqueue -f`, s" % BACKLOG_DOMAIN, None),
    ("route_ok", "(f) the command replied (the supervisor waits 5 s for osesctl, mtacon 60 s)", None),
    ("drain", "(f) drain msg/s from the command until the sink has the first %s", "drain"),
    ("drain_after_cmd", "(f) the same drain counted from the end of the command, msg/s", None),
    ("drain_cpu_us", "(f) drain CPU µs/msg", None),
    ("load1", "machine load (1-min average) when the run started", None),
]


def drain_target(results, old_json, docs):
    """smtpmta's end-to-end msg/s of the 20,000-message drain: this run's, else the last
    results.json's, else the table in the docs."""
    for src, res in (("this run", results), ("the previous results.json", (old_json or {}).get("results", {}))):
        v = res.get("drain", {}).get("smtpmta", {}).get("e2e")
        if v:
            return statistics.median(v), src
    if docs and os.path.exists(docs):
        m = re.search(r"^\| drain 20,000[^\n]*\n(?:\|  \|[^\n]*\n)*?\|  \| end-to-end msg/s \| ([\d.]+)",
                      open(docs).read(), flags=re.M)
        if m:
            return float(m.group(1)), docs
    return None, None


def backlog_table(results, sc, target_drain):
    r = results.get(sc["id"], {})
    n, pn = sc["count"], sc["pf_count"]
    title = ("backlog: smtpmta %s deferred (`queue-fill`), Postfix %s (`smtp-source` to a dead relay); "
             "intake %s × 2 per phase; 1 run" % ("{:,}".format(n), "{:,}".format(pn), "{:,}".format(sc["intake"])))
    rows = ["| scenario | figure | smtpmta | Postfix | smtpmta / Postfix | target |",
            "|---|---|---|---|---|---|"]
    first = True
    for key, label, target in BACKLOG_ROWS:
        a, b = r.get("smtpmta", {}).get(key, []), r.get("postfix", {}).get(key, [])
        if not a and not b:
            continue
        if key == "drain":
            fa, fb = min(n, sc["drain_first"]), min(pn, sc["drain_first"])
            label = label % ("%s (smtpmta: of its %s; Postfix: %s of its %s)" % (
                "{:,}".format(fa), "{:,}".format(n), "{:,}".format(fb) if fb != fa else "all" if fb == pn else "the first",
                "{:,}".format(pn)))
            target = (("≥ %s (the 20,000 drain)" % fmt(target_drain), lambda v: v >= target_drain)
                      if target_drain else None)
        ratio = "—"
        if a and b and key != "load1" and not isinstance(a[0], bool):
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = "%.2f×" % (ma / mb) if mb else ("—" if not ma else "∞")
        tgt = ""
        if target and a:
            tgt = "%s %s" % (target[0], "✅" if target[1](statistics.median(a)) else "❌")
        rows.append("| %s | %s | %s | %s | %s | %s |" % (title if first else "", label, cell(a), cell(b), ratio, tgt))
        first = False
    return "\n".join(rows)


def machine():
    def sh(c):
        try:
            return subprocess.run(c, shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True).stdout.strip()
        except OSError:
            return "?"
    model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    disk = sh("df -T %s | tail -1 | awk '{print $1\" \"$2}'" % REPO)
    dev = os.path.basename(disk.split()[0]) if disk else ""
    rota = sh("cat /sys/block/%s/queue/rotational 2>/dev/null" % dev)
    return {
        "nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release,
        "memory": sh("free -m | awk '/Mem:/{print $2\" MiB\"}'"),
        "disk": "%s (%s)" % (disk, {"0": "non-rotational", "1": "reported rotational (virtual disk)"}.get(rota, "?")),
        "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "postfix": sh("postconf -d -h mail_version"),
        "chasquid": sh("chasquid -version 2>&1 | head -1"),
        "smtpmta": sh("cd %s && git rev-parse --short HEAD && git status --porcelain -uno | wc -l" % REPO).replace("\n", ", dirty files: "),
        "cpu_accounting": "cgroup v2 (%s)" % Group.base if Group.base else "/proc tree sums",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--only", help="comma-separated scenario ids")
    ap.add_argument("--no-fsync", action="store_true", help="skip the strace runs")
    ap.add_argument("--flame", metavar="DIR",
                    help="profile the first serial latency run of each MTA with perf and write "
                         "DIR/flamegraph-serial-<mta>.svg (needs inferno: cargo install inferno)")
    ap.add_argument("--docs", help="write the results section into this markdown file")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every message count (debugging)")
    ap.add_argument("--backlog-count", type=int, help="backlog: smtpmta's deferred messages (after --scale)")
    ap.add_argument("--backlog-postfix-count", type=int, help="backlog: Postfix's deferred messages")
    a = ap.parse_args()
    global FLAME_DIR
    FLAME_DIR = a.flame
    reps = a.reps or (1 if a.quick else 3)
    scs = scenarios(a.quick)
    if a.only:
        keep = a.only.split(",")
        scs = [s for s in scs if s["id"] in keep]
    for s in scs:
        for k in ("count", "fsync_count", "pf_count", "intake", "drain_first", "queued", "hs_count"):
            if k in s and s["kind"] not in ("idle", "tlsidle"):
                s[k] = max(10, int(s[k] * a.scale))
        if s["kind"] == "backlog":
            s["count"] = a.backlog_count or s["count"]
            s["pf_count"] = a.backlog_postfix_count or s["pf_count"]
    if os.geteuid() != 0:
        sys.exit("scripts/bench must run as root (it starts a private Postfix instance)")

    sysconf = {p: hashlib.sha256(open(p, "rb").read()).hexdigest()
               for p in ("/etc/postfix/main.cf", "/etc/postfix/master.cf") if os.path.exists(p)}
    top = tempfile.mkdtemp(prefix="smtpmta-bench.", dir="/var/tmp")
    os.chmod(top, 0o755)
    CLEANUPS.append(lambda: shutil.rmtree(top, ignore_errors=True))
    CLEANUPS.append(purge_discarded)
    Group.setup()
    LocalUser.setup(top)
    mach = machine()
    log("machine: %s" % mach)

    results = {}
    t_start = time.time()
    try:
        for sc in scs:
            res = results.setdefault(sc["id"], {k: {} for k in kinds_for(sc)})
            for rep in range(min(reps, sc.get("reps", reps))):
                for kind in kinds_for(sc):
                    fn = {"tp": throughput_run, "lat": latency_run, "drain": drain_run, "idle": idle_run,
                          "backlog": backlog_run, "metrics": metrics_run, "tls": tls_run,
                          "tlsidle": tls_idle_run, "dkim": dkim_run, "milter": milter_run,
                          "shaperate": shaping_rate_run, "shapedrain": shaping_drain_run,
                          "wake": wakeups_run, "cluster": cluster_run}[sc["kind"]]
                    try:
                        r = fn(kind, top, sc)
                    except Exception as e:
                        if kind != "chasquid":
                            raise
                        # The second peer is a comparison, not the subject: its failure to run
                        # here leaves its column empty and is said, not fatal.
                        log("%-18s rep %d chasquid failed: %s" % (sc["id"], rep + 1, e))
                        continue
                    log("%-18s rep %d %-8s %s" % (sc["id"], rep + 1, kind,
                                                  " ".join("%s=%s" % (k, fmt(v)) for k, v in r.items())))
                    for k, v in r.items():
                        res[kind].setdefault(k, []).append(v)
            if sc["kind"] == "tp" and not a.no_fsync:
                for kind in kinds_for(sc):
                    try:
                        r = throughput_run(kind, top, sc, trace=True)
                    except Exception as e:
                        if kind != "chasquid":
                            raise
                        log("%-18s strace   chasquid failed: %s" % (sc["id"], e))
                        continue
                    log("%-18s strace   %-8s %.2f fsyncs/msg, %.2f sync_file_range/msg %s" % (
                        sc["id"], kind, r["fsync_per_msg"], r["sfr_per_msg"], r["fsync_calls"]))
                    res[kind].setdefault("fsync_per_msg", []).append(r["fsync_per_msg"])
                    res[kind].setdefault("sfr_per_msg", []).append(r["sfr_per_msg"])
                    res[kind].setdefault("fsync_calls", []).append(r["fsync_calls"])
    finally:
        for p in ("/etc/postfix/main.cf", "/etc/postfix/master.cf"):
            if p in sysconf and hashlib.sha256(open(p, "rb").read()).hexdigest() != sysconf[p]:
                log("WARNING: %s changed during the run (not by this script)" % p)

    elapsed = time.time() - t_start
    main_scs = [s for s in scs if s["kind"] != "backlog"]
    back_scs = [s for s in scs if s["kind"] == "backlog"]
    old_json = None
    if a.json and os.path.exists(a.json):
        try:
            old_json = json.load(open(a.json))
        except (OSError, ValueError):
            pass
    tbl = table(results, main_scs) if main_scs else None
    btbl = None
    if back_scs:
        target, source = drain_target(results, old_json, a.docs)
        btbl = backlog_table(results, back_scs[0], target)
        if target:
            log("backlog: drain target %.0f msg/s from %s" % (target, source))
    print()
    print("smtpmta vs Postfix %s — %d repetition(s), median (min..max); %.0f s" %
          (mach["postfix"], reps, elapsed))
    for t in (tbl, btbl):
        if t:
            print(t)
            print()
    if a.json:
        # Merged with the previous file: a run of some scenarios (--only) keeps the others'.
        date = datetime.datetime.now().isoformat(timespec="seconds")
        keep = old_json if old_json and isinstance(old_json.get("results"), dict) else {}
        merged = {sid: r for sid, r in keep.get("results", {}).items() if sid not in results}
        merged.update(results)
        runs = {sid: v for sid, v in keep.get("runs", {}).items() if sid not in results}
        runs.update({sid: {"date": date, "machine": mach, "reps": reps} for sid in results})
        ids = [s["id"] for s in scs]
        msc = [s for s in keep.get("scenarios", []) if s.get("id") not in ids] + scs
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"machine": mach, "reps": reps, "scenarios": msc, "results": merged,
                       "runs": runs, "date": date}, f, indent=1)
    if a.docs:
        write_docs(a.docs, tbl, btbl, mach, reps, elapsed, results)


def write_docs(path, tbl, btbl, mach, reps, elapsed, results):
    """The main table between its markers (only when this run had other scenarios than the
    backlog), the backlog's between its own (added after the main block the first time)."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n<!-- bench:begin -->\n<!-- bench:end -->\n"
    machine_line = ("Machine: %d CPUs (%s), %s, kernel %s, %s RAM, disk %s; Postfix %s; smtpmta %s; CPU from %s." %
                    (mach["nproc"], mach["cpu"], mach["os"], mach["kernel"], mach["memory"], mach["disk"],
                     mach["postfix"], mach["smtpmta"], mach["cpu_accounting"]) +
                    (" chasquid: %s." % mach["chasquid"] if mach.get("chasquid") else ""))
    if tbl:
        text = write_main_block(text, tbl, machine_line, reps, elapsed, results)
    if btbl:
        block = "\n".join([
            "<!-- bench-backlog:begin (generated by scripts/bench --only backlog; edit outside these markers) -->",
            "Run of %s, one run per MTA, %.0f s in all (with the other scenarios' time if they ran too)." %
            (datetime.date.today().isoformat(), elapsed), "", machine_line, "", btbl, "",
            "<!-- bench-backlog:end -->"])
        if "<!-- bench-backlog:begin" in text:
            text = re.sub(r"<!-- bench-backlog:begin.*?<!-- bench-backlog:end -->", lambda _: block, text, flags=re.S)
        else:
            text = re.sub(r"<!-- bench:end -->\n?", lambda m: m.group(0) + "\n### Backlog (issue 10)\n\n" + block + "\n",
                          text, count=1)
    with open(path, "w") as f:
        f.write(text)
    log("wrote %s" % path)


def write_main_block(text, tbl, machine_line, reps, elapsed, results):
    fs = []
    for sid, r in results.items():
        for kind in r:
            for c in r[kind].get("fsync_calls", []):
                fs.append("%s %s: %s" % (sid, kind, ", ".join("%s %d" % kv for kv in sorted(c.items()))))
    block = ["<!-- bench:begin (generated by scripts/bench; edit outside these markers) -->",
             "Run of %s, %d repetition(s) per figure, median (min..max), %.0f s in all." %
             (datetime.date.today().isoformat(), reps, elapsed), "",
             machine_line, "",
             tbl, "", "<details><summary>fsync-family calls counted by strace</summary>", "",
             "\n".join("- " + x for x in fs) or "- (none)", "", "</details>",
             "<!-- bench:end -->"]
    return re.sub(r"<!-- bench:begin.*?<!-- bench:end -->", lambda _: "\n".join(block), text, flags=re.S)


def cleanup(*_):
    for p in list(STARTED):
        try:
            stop_proc(p, wait=10)
        except Exception:
            pass
    while CLEANUPS:
        try:
            CLEANUPS.pop()()
        except Exception as e:
            log("cleanup: %s" % e)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    try:
        main()
    finally:
        cleanup()
