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
import time


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


def times(pid):
    """User and system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: fields count from after it.
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="process name, as in /proc/PID/comm")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    found = pids(args.name)
    if not found:
        raise SystemExit(f"no process named {args.name}")
    before = {pid: times(pid) for pid in found}
    time.sleep(args.seconds)
    for pid in found:
        user0, sys0 = before[pid]
        user1, sys1 = times(pid)
        user, system = user1 - user0, sys1 - sys0
        total = user + system
        share = user / total if total else 0.0
        print(
            f"{args.name} pid {pid}: user {user:.2f} s, system {system:.2f} s "
            f"over {args.seconds:g} s (user {share:.0%} of its CPU)"
        )


if __name__ == "__main__":
    main()
