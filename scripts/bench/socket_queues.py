#!/usr/bin/env python3
"""Where bytes wait on their way through a relay: per process, the mean
bytes per established TCP socket that are

- received and not yet read by the process (Recv-Q),
- sent and not yet acknowledged by the peer (Send-Q),
- written by the process and not yet sent at all (`notsent`: Nagle, or
  the congestion window).

Run it while a bench holds its load (for example `cargo bench --bench
fanout -- latency --viewers 1000 --rate 100 --seconds 30`), on this host:

    python3 scripts/bench/socket_queues.py --samples 10 --every 0.4

By Little's law, a queue of Q bytes per socket on a flow of R bytes per
second per socket is Q / R seconds of waiting there: at 100 messages of
212 bytes a second, 212 bytes of Recv-Q is 10 ms. Reads `ss -tnpi`; only
loopback sockets with a known owner are counted.
"""

import argparse
import collections
import re
import subprocess
import time

SOCKET = re.compile(
    r"^ESTAB\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+users:\(\(\"([^\"]+)\"")
NOTSENT = re.compile(r"\bnotsent:(\d+)")


def sample(totals):
    """Adds one `ss` snapshot to `totals` (process -> [recvq, sendq,
    notsent, sockets])."""
    lines = subprocess.run(["ss", "-tnpi"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for i, line in enumerate(lines):
        m = SOCKET.match(line)
        if not m:
            continue
        recvq, sendq, proc = int(m.group(1)), int(m.group(2)), m.group(3)
        info = lines[i + 1] if i + 1 < len(lines) else ""
        n = NOTSENT.search(info)
        t = totals[proc]
        t[0] += recvq
        t[1] += sendq
        t[2] += int(n.group(1)) if n else 0
        t[3] += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--every", type=float, default=0.4, help="seconds")
    args = ap.parse_args()
    totals = collections.defaultdict(lambda: [0, 0, 0, 0])
    for k in range(args.samples):
        if k:
            time.sleep(args.every)
        sample(totals)
    print("| process | sockets | Recv-Q B/socket | Send-Q B/socket "
          "| notsent B/socket |")
    print("|---|---|---|---|---|")
    for proc, (rq, sq, ns, n) in sorted(totals.items()):
        print(f"| {proc} | {n / args.samples:.0f} | {rq / n:.1f} "
              f"| {sq / n:.1f} | {ns / n:.1f} |")


if __name__ == "__main__":
    main()
