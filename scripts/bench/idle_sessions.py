#!/usr/bin/env python3
"""Guard memory per established idle session.

Starts nginx-rtmp and a release guard, opens N sessions through the guard
(handshake + `connect` for app `live`, so each holds an upstream
connection), leaves them idle, and reports the guard's RSS before and
after, per session.

    scripts/bench/idle_sessions.py [--sessions 1000]
"""

import argparse
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from relay import GUARD, free_port, start_guard, start_nginx, stop_all  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def amf_string(s):
    b = s.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf_object(props):
    out = b"\x03"
    for k, v in props:
        kb = k.encode()
        out += struct.pack(">H", len(kb)) + kb + amf_string(v)
    return out + b"\x00\x00\x09"


def connect_message(port):
    payload = (amf_string("connect") + b"\x00" + struct.pack(">d", 1.0)
               + amf_object([("app", "live"), ("type", "nonprivate"),
                             ("tcUrl", f"rtmp://127.0.0.1:{port}/live")]))
    out = b""
    for i in range(0, len(payload), 128):
        piece = payload[i:i + 128]
        if i == 0:
            out += (b"\x03" + b"\x00\x00\x00" + struct.pack(">I", len(payload))[1:]
                    + b"\x14" + b"\x00\x00\x00\x00")
        else:
            out += b"\xc3"
        out += piece
    return out


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("closed during handshake")
        buf += chunk
    return buf


def open_session(port):
    """A simple (non-digest) handshake and a connect; the guard accepts it."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c1 = b"\x00" * 8 + os.urandom(1528)
    s.sendall(b"\x03" + c1)
    s0s1s2 = recv_exact(s, 3073)
    s.sendall(s0s1s2[1:1537])  # C2 echoes S1
    s.sendall(connect_message(port))
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not os.path.exists(GUARD):
        sys.exit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="rtmp-guard-idle-")
    origin, stat = free_port(), free_port()
    guard_port, metrics_port = free_port(), free_port()
    procs = []
    socks = []
    try:
        procs.append(start_nginx(work, origin, stat))
        # Every session comes from 127.0.0.1: lift the per-address limits,
        # which would otherwise (rightly) refuse most of them.
        per_ip = ("[limits.per_ip]\nconnections_per_second = 100000\n"
                  "burst = 100000\nmax_concurrent = 100000\n")
        guard = start_guard(work, guard_port, metrics_port, origin, per_ip)
        procs.append(guard)
        # Warm up: one session, so lazily allocated runtime state exists.
        socks.append(open_session(guard_port))
        time.sleep(1)
        before = rss_kib(guard.pid)
        for _ in range(args.sessions - 1):
            socks.append(open_session(guard_port))
        time.sleep(3)
        after = rss_kib(guard.pid)
        active = subprocess.run(
            ["curl", "-s", f"http://127.0.0.1:{metrics_port}/metrics"],
            capture_output=True, text=True).stdout
        sessions = [l for l in active.splitlines()
                    if l.startswith('rtmp_guard_sessions_active{app="live"}')]
        print(f"sessions requested: {args.sessions}; guard reports: {sessions}")
        print(f"guard RSS: {before} KiB with 1 session, {after} KiB with "
              f"{args.sessions}: {(after - before) / (args.sessions - 1):.1f} KiB per session")
    finally:
        for s in socks:
            s.close()
        stop_all(procs)


if __name__ == "__main__":
    main()
