#!/usr/bin/env python3
"""Memory figures for the README (issue: size the pool).

1. An idle pool: RSS of `poolserver --workers 64` right after start.
2. A full queue: RSS of `poolserver --workers 1 --backlog 10000` while one
   client holds the only worker and 10,000 more connections wait in the
   accept queue.
3. Event dispatch: RSS and threads of `poolserver --dispatch event
   --workers 8` while 10,000 connections, each served one round trip, sit
   parked in the poller.

Usage: scripts/memory.py [path/to/poolserver]   (default target/release/poolserver)
Targets 127.0.0.1 only; every wait is bounded.
"""
import os
import re
import resource
import socket
import subprocess
import sys
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/poolserver"
QUEUED = 10_000


def start(*args):
    p = subprocess.Popen(
        [BIN, "--addr", "127.0.0.1:0", "--monitor-interval", "0", *args],
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        line = p.stderr.readline()
        m = re.search(r"listening on (\S+)", line)
        if m:
            host, port = m.group(1).rsplit(":", 1)
            return p, (host, int(port))
    p.kill()
    sys.exit("poolserver did not start")


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = QUEUED + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    p, addr = start("--workers", "64")
    time.sleep(0.5)  # let every worker thread reach its first recv
    idle = status(p.pid, "VmRSS")
    print(f"idle pool of 64 workers: RSS {mib(idle)}  (target < 30 MiB)")
    p.terminate()
    p.wait(timeout=20)

    p, addr = start("--workers", "1", "--backlog", str(QUEUED),
                    "--listen-backlog", "4096", "--idle-timeout", "0")
    holder = socket.create_connection(addr, timeout=10)
    holder.sendall(b"hold\n")
    assert holder.recv(16) == b"HOLD\n"
    before = status(p.pid, "VmRSS")
    conns = []
    for _ in range(QUEUED):
        conns.append(socket.create_connection(addr, timeout=10))
    # Wait (bounded) until the acceptor has taken every connection off the
    # kernel's queue: the server's fd count tells.
    deadline = time.time() + 60
    while time.time() < deadline and len(os.listdir(f"/proc/{p.pid}/fd")) < QUEUED + 4:
        time.sleep(0.1)
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    rss = status(p.pid, "VmRSS")
    hwm = status(p.pid, "VmHWM")
    print(f"{QUEUED} connections queued ({fds} fds open): RSS {mib(rss)} "
          f"(peak {mib(hwm)}; {mib(before)} before)  (target < 50 MiB)")
    for c in conns:
        c.close()
    holder.close()
    p.terminate()
    p.wait(timeout=30)

    p, addr = start("--workers", "8", "--dispatch", "event",
                    "--max-connections", str(QUEUED + 100), "--listen-backlog", "4096",
                    "--idle-timeout", "0")
    before = status(p.pid, "VmRSS")
    conns = []
    for i in range(QUEUED):
        c = socket.create_connection(addr, timeout=10)
        c.sendall(b"park me %d\n" % i)
        want = b"PARK ME %d\n" % i
        got = b""
        while len(got) < len(want):  # bounded: each recv has a 10 s timeout
            chunk = c.recv(64)
            if not chunk:
                break
            got += chunk
        assert got == want, (got, want)
        conns.append(c)
    fds = len(os.listdir(f"/proc/{p.pid}/fd"))
    threads = len(os.listdir(f"/proc/{p.pid}/task"))
    rss = status(p.pid, "VmRSS")
    hwm = status(p.pid, "VmHWM")
    print(f"event dispatch, 8 workers, {QUEUED} connections served and parked ({fds} fds open, "
          f"{threads} threads): RSS {mib(rss)} (peak {mib(hwm)}; {mib(before)} before)  "
          f"(target <= 32 MiB)")
    for c in conns:
        c.close()
    p.terminate()
    p.wait(timeout=30)


if __name__ == "__main__":
    main()
