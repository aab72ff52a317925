#!/usr/bin/env python3
"""Relay throughput: direct to nginx-rtmp, through HAProxy (mode tcp), and
through rtmp-guard, alternated in one run.

Publishers push a 1080p 8 Mbit/s FLV (generated once) with
`ffmpeg -stream_loop 9 -c copy` (no -re), so they send as fast as the path
allows. For 1 and 8 concurrent publishers, each round runs every path once;
the script reports per-path medians of aggregate MB/s and of the proxy's CPU
seconds per GB relayed.

    scripts/bench/relay.py [--rounds 3] [--seconds 20]

Needs: ffmpeg, nginx + libnginx-mod-rtmp, haproxy
(scripts/install-test-deps.sh haproxy), and a release build of the guard.
"""

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUARD = os.path.join(ROOT, "target", "release", "rtmp-guard")
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def stop_all(procs):
    """Terminates the servers a bench started, killing any that linger."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_times(pid):
    """utime and stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: fields count from after it.
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    return sum(cpu_times(pid))


def make_source(path, seconds):
    if os.path.exists(path):
        return
    print(f"generating {seconds}s 1080p 8 Mbit/s source -> {path}", flush=True)
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
         "-b:v", "8M", "-maxrate", "8M", "-bufsize", "16M", "-g", "60",
         "-c:a", "aac", "-b:a", "128k", "-f", "flv", path],
        check=True)


def start_nginx(work, port, stat_port):
    conf = os.path.join(work, "nginx.conf")
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""load_module {RTMP_MODULE};
daemon off; master_process off; worker_processes 1;
error_log {work}/nginx-error.log warn; pid {work}/nginx.pid;
events {{ worker_connections 4096; }}
rtmp {{ server {{ listen 127.0.0.1:{port}; chunk_size 4096;
  application live {{ live on; record off; }} }} }}
http {{ access_log off; client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{stat_port}; location /stat {{ rtmp_stat all; }} }} }}
""")
    p = subprocess.Popen(["nginx", "-p", work, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(stat_port)
    return p


def start_haproxy(work, port, origin_port):
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend rtmp
    bind 127.0.0.1:{port}
    default_backend origin
backend origin
    server nginx 127.0.0.1:{origin_port}
""")
    p = subprocess.Popen(["haproxy", "-f", conf, "-db"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p


def start_guard(work, port, metrics_port, origin_port, extra=""):
    """The release guard in front of the origin; `extra` adds TOML tables."""
    conf = os.path.join(work, "guard.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]
listen = ["127.0.0.1:{port}"]
idle_timeout = "600s"
{extra}
[metrics]
listen = "127.0.0.1:{metrics_port}"
[[upstream]]
name = "origin"
servers = ["127.0.0.1:{origin_port}"]
[[app]]
name = "live"
upstream = "origin"
publish = "none"
""")
    log = open(os.path.join(work, "guard.log"), "w")
    p = subprocess.Popen([GUARD, "--config", conf], stdout=log, stderr=log,
                         env=dict(os.environ, RUST_LOG="warn"))
    wait_port(metrics_port)
    return p


def publish_all(port, source, n, tag):
    """Runs n publishers to completion; returns wall seconds."""
    start = time.time()
    procs = [subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
         "-stream_loop", "9", "-i", source, "-c", "copy", "-f", "flv",
         f"rtmp://127.0.0.1:{port}/live/{tag}-{i}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(n)]
    failed = 0
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            failed += 1
            sys.stderr.write(err.decode(errors="replace")[-500:])
    if failed:
        raise RuntimeError(f"{failed} publishers failed on {tag}")
    return time.time() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20, help="source length")
    ap.add_argument("--publishers", default="1,8")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cache = os.path.join(tempfile.gettempdir(), "rtmp-guard-bench")
    os.makedirs(cache, exist_ok=True)
    source = os.path.join(cache, f"src-1080p-8M-{args.seconds}s.flv")
    make_source(source, args.seconds)
    size = os.path.getsize(source) * 10  # -stream_loop 9 sends it 10 times

    work = tempfile.mkdtemp(prefix="rtmp-guard-bench-")
    origin, stat = free_port(), free_port()
    hap_port = free_port()
    guard_port, metrics_port = free_port(), free_port()
    procs = []
    try:
        procs.append(start_nginx(work, origin, stat))
        hap = start_haproxy(work, hap_port, origin)
        procs.append(hap)
        guard = start_guard(work, guard_port, metrics_port, origin)
        procs.append(guard)
        paths = [("direct", origin, None), ("haproxy", hap_port, hap.pid),
                 ("guard", guard_port, guard.pid)]
        results = {}
        for n in [int(x) for x in args.publishers.split(",")]:
            for r in range(args.rounds):
                # Rotate the order each round so no path always goes first.
                order = paths[r % 3:] + paths[:r % 3]
                for name, port, pid in order:
                    cpu0 = cpu_seconds(pid) if pid else 0.0
                    wall = publish_all(port, source, n, f"{name}{r}")
                    cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
                    mbps = size * n / wall / 1e6
                    gb = size * n / 1e9
                    results.setdefault((n, name), []).append((mbps, cpu / gb))
                    print(f"publishers={n} round={r} {name:8s} {mbps:8.1f} MB/s "
                          f"proxy_cpu={cpu:6.2f}s ({cpu / gb:.3f} s/GB)", flush=True)
        print()
        print(f"source: {os.path.getsize(source) / 1e6:.1f} MB x10 per publisher; "
              f"rounds={args.rounds}; medians:")
        print("| publishers | path | MB/s | vs direct | proxy CPU s/GB |")
        print("|---|---|---|---|---|")
        for n in sorted({k[0] for k in results}):
            direct = statistics.median(m for m, _ in results[(n, "direct")])
            for name in ["direct", "haproxy", "guard"]:
                rows = results[(n, name)]
                mbps = statistics.median(m for m, _ in rows)
                cpu = statistics.median(c for _, c in rows)
                cpu_s = "-" if name == "direct" else f"{cpu:.3f}"
                print(f"| {n} | {name} | {mbps:.1f} | {mbps / direct:.2f}x | {cpu_s} |")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
