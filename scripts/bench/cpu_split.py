#!/usr/bin/env python3
"""A proxy's CPU over a window, split into user and kernel time.

The fan-out bench reports CPU per GB, of which the kernel's share (the
TCP work of both legs) is some nine tenths on loopback, and varies with
the machine's other load more than the proxy's own work does. The user
share is what the guard's code changes; this reads it apart.

Run it while a bench holds its load (for example `cargo bench --bench
fanout -- fanout --viewers 1000 --kbps 1500 --seconds 30 --rounds 1
--paths guard`), on this host, once the viewers play:

    python3 scripts/bench/cpu_split.py rtmp-guard --seconds 10

Reads /proc/PID/stat (utime, stime) of each process of that name.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from relay import cpu_times  # noqa: E402


def pids(name):
    """The processes whose command name is `name`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(entry))
        except OSError:
            continue
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="process name, as in /proc/PID/comm")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    found = pids(args.name)
    if not found:
        raise SystemExit(f"no process named {args.name}")
    before = {pid: cpu_times(pid) for pid in found}
    time.sleep(args.seconds)
    for pid in found:
        user0, sys0 = before[pid]
        user1, sys1 = cpu_times(pid)
        user, system = user1 - user0, sys1 - sys0
        total = user + system
        share = user / total if total else 0.0
        print(
            f"{args.name} pid {pid}: user {user:.2f} s, system {system:.2f} s "
            f"over {args.seconds:g} s (user {share:.0%} of its CPU)"
        )


if __name__ == "__main__":
    main()
