#!/usr/bin/env python3
"""CPU use per second of the Kafka broker, the rlap daemon and the bench, by thread name.

Run it beside `make bench-stream` to see who holds the two cores in a slow second:

    python3 scripts/cpu-by-thread.py out/cpu.txt &   # then: make bench-stream; kill %1

Each line: wall time, the total per process group (kafka / daemon / bench) and the eight
busiest thread groups, in clock ticks (100 = one core for the second). Thread names ending in
a number are grouped ("data-plane-kafka-request-handler-3" counts with its siblings). This is
how the broker's JIT compiler (`C2 CompilerThre`, 45-75 ticks/s for the first ~40 s of a
soak) was found to set the p99 of a freshly started broker (README, "Benchmarks").
"""
import collections
import os
import re
import sys
import time


def processes():
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = b" ".join(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0"))
        except OSError:
            continue
        if b"kafka.Kafka" in cmd:
            found[pid] = "kafka"
        elif b"rlap" in cmd and b" serve " in cmd:
            found[pid] = "daemon"
        elif b"rlap" in cmd and b"bench-stream" in cmd:
            found[pid] = "bench"
    return found


def main():
    out = open(sys.argv[1], "w") if len(sys.argv) > 1 else sys.stdout
    previous = {}
    while True:
        ticks = collections.Counter()
        for pid, who in processes().items():
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                try:
                    stat = open(f"/proc/{pid}/task/{tid}/stat").read()
                except OSError:
                    continue
                name = re.sub(r"[-_ ]?\d+$", "", stat[stat.index("(") + 1 : stat.rindex(")")])
                fields = stat[stat.rindex(")") + 2 :].split()
                total = int(fields[11]) + int(fields[12])  # utime + stime
                key = (pid, tid)
                if key in previous:
                    ticks[(who, name)] += total - previous[key]
                previous[key] = total
        per_process = collections.Counter()
        for (who, _), d in ticks.items():
            per_process[who] += d
        busiest = sorted(((d, w, n) for (w, n), d in ticks.items() if d > 0), reverse=True)[:8]
        out.write(
            time.strftime("%H:%M:%S ")
            + " ".join(f"{w}={d}" for w, d in sorted(per_process.items()))
            + " | "
            + " ".join(f"{w}:{n}={d}" for d, w, n in busiest)
            + "\n"
        )
        out.flush()
        time.sleep(1)


if __name__ == "__main__":
    main()
