#!/usr/bin/env bash
# fio and ringbench on the same workload, same file, same rate: the fio job zipf-open-loop.fio
# beside its ringbench equivalent, interleaved over ROUNDS rounds, each tool's per-kind p50, p90
# and p99 of lat, slat and clat printed side by side (medians over the rounds), then every round's
# lat percentiles and each tool's spread over its own rounds (its noise against itself).
#
# Both tools define them alike (fio's definitions): slat from when the operation is prepared to
# when the io_uring_enter that submits it returns, clat from then to the reap, lat the two.
# ringbench's co_lat also counts how late the start went out after its intended time
# (coordinated omission corrected), which fio does not report.
#
# Like for like by default: ENGINE=raw-uring (one plain ring, registered buffers and files, as the
# fio job asks with fixedbufs/registerfiles) and RATE_WAIT=sleep (between starts, reap everything
# in flight and sleep, as fio does; RATE_WAIT=poll is ringbench's default: block on the ring until
# shortly before a start, then poll), with reads and writes on schedules of their own
# (--rate-per-direction, as fio's rate_iops=R,W). PERF=1 runs each tool under `perf stat -e
# context-switches,cpu-clock` and prints the medians (needs perf).
#
# DIRECT=0 (default): page cache, the file read into it before every round. DIRECT=1: O_DIRECT
# on both (fio direct=1, ringbench --direct), the file's pages dropped before every round, so the
# device's time is measured; DIR must then be on a disk filesystem (not tmpfs), and SIZE is best a
# few GiB, larger than what the device caches. SIZE is the file's size (default 256m), BS the
# block size, RATE the total reads + writes per second (split 70/30), RUNTIME the measured seconds.
#
#   tools/ringbench/examples/fio-vs-ringbench.sh     # 3 rounds of 10 s per tool, 64k, 5000 IOPS
#   ROUNDS=5 RUNTIME=20 BS=4k RATE=10000 ENGINE=ringshard DIR=/var/tmp/x tools/ringbench/examples/fio-vs-ringbench.sh
#   DIRECT=1 SIZE=4g BS=4k RATE=5000 DIR=/var/tmp/x tools/ringbench/examples/fio-vs-ringbench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ROUNDS=${ROUNDS:-3}
export RUNTIME=${RUNTIME:-10}
export BS=${BS:-64k}
export SIZE=${SIZE:-256m}
export DIRECT=${DIRECT:-0}
RATE=${RATE:-5000}
ENGINE=${ENGINE:-raw-uring}
RATE_WAIT=${RATE_WAIT:-sleep}
PERF=${PERF:-0}
export RATE_R=$((RATE * 70 / 100)) RATE_W=$((RATE - RATE * 70 / 100))
export DIR=${DIR:-$(mktemp -d /tmp/fio-vs-ringbench.XXXXXX)}
RINGBENCH=${RINGBENCH:-}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON" >&2; exit 2; }
if [ "$PERF" = 1 ]; then
  command -v perf >/dev/null || { echo "PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 2; }
fi
if [ -z "$RINGBENCH" ]; then
  cargo build --release -q -p ringbench --manifest-path "$here/../../../Cargo.toml"
  RINGBENCH="$here/../../../target/release/ringbench"
fi
mkdir -p "$DIR"
# The ringbench equivalent of zipf-open-loop.fio (--rate-iops is per load generator, one here,
# reads and writes together; --rate-per-direction splits it 70/30 as the job's rate_iops).
rb_args=(--dir "$DIR" --cores 1 --files 1 --size "$SIZE" --direct="$DIRECT" --rw randrw
  --rwmixread 70 --bs "$BS" --iodepth 8 --random-distribution zipf:1.2 --rate-iops "$RATE"
  --ramp-time 2 --runtime "$RUNTIME" --percentiles 50,90,99 --engine "$ENGINE"
  --rate-wait "$RATE_WAIT" --rate-per-direction --output-format json --quiet)
# Both at the highest priority, so that other work on the machine disturbs them less (and alike).
nice=(nice -n -20)
"${nice[@]}" true 2>/dev/null || nice=()
# perf stat of the whole run (ramp and setup included: the same for both).
perf_of() {
  if [ "$PERF" = 1 ]; then
    perf stat -x, -e context-switches,cpu-clock -o "$1" -- "${@:2}"
  else
    "${@:2}"
  fi
}
echo "load before: $(uptime)" >&2
# Creates and fills the file (ringbench.0.dat) once; both tools then use it.
"$RINGBENCH" --dir "$DIR" --cores 1 --files 1 --size "$SIZE" --ops 1 --quiet >/dev/null
# The same page cache state before each tool's run: the file warm, or (O_DIRECT) none of its pages
# cached, so that neither tool's direct writes pay for writing back or dropping cached pages.
same_start() {
  if [ "$DIRECT" = 1 ]; then
    sync "$DIR/ringbench.0.dat"   # written back first: only clean pages can be dropped
    dd if="$DIR/ringbench.0.dat" iflag=nocache count=0 status=none
  else
    cat "$DIR/ringbench.0.dat" >/dev/null
  fi
}
run_fio() {
  perf_of "$DIR/fio.$1.perf" "${nice[@]}" fio "$here/zipf-open-loop.fio" --output-format=json >"$DIR/fio.$1.json"
}
run_ringbench() {
  perf_of "$DIR/ringbench.$1.perf" "${nice[@]}" "$RINGBENCH" "${rb_args[@]}" >"$DIR/ringbench.$1.json"
}
# Odd rounds run fio first, even rounds ringbench first: neither always follows the other.
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order=(run_fio run_ringbench); else order=(run_ringbench run_fio); fi
  for run in "${order[@]}"; do
    same_start
    "$run" "$r"
  done
  # Others' work shows as load (CPU) and as I/O pressure (the disk, which O_DIRECT runs share).
  echo "round $r/$ROUNDS done; $(uptime); io $(head -1 /proc/pressure/io 2>/dev/null)" >&2
done
echo "load after: $(uptime)" >&2
python3 - "$DIR" "$ROUNDS" "$ENGINE" "$RATE_WAIT" "$PERF" "$DIRECT" <<'PY'
import json, statistics, sys
d, rounds, engine, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
perf, direct = sys.argv[5] == "1", sys.argv[6] == "1"
R = range(1, rounds + 1)
P = (50, 90, 99)
TOOLS = ("fio", "ringbench")
def load(tool, r):
    return json.load(open(f"{d}/{tool}.{r}.json"))["jobs"][0]
def pct(job, kind, lat, p):
    block = job[kind].get(lat)
    return None if block is None else block["percentile"][f"{p:.6f}"] / 1000.0
def rounds_of(tool, kind, lat, p):
    return [pct(load(tool, r), kind, lat, p) for r in R]
def med(tool, kind, lat, p):
    v = rounds_of(tool, kind, lat, p)
    return None if None in v else statistics.median(v)
where = "O_DIRECT" if direct else "page cache"
print(f"medians of {rounds} interleaved round(s); µs; {where}; ringbench --engine {engine} --rate-wait {wait}")
print("both: slat prepared -> submit returned, clat -> reaped, lat = slat + clat (fio's definitions)")
print(f"{'kind':<6} {'pct':<4} {'':<6} {'fio':>9} {'ringbench':>10} {'diff':>8}")
for kind in ("read", "write"):
    for p in P:
        for lat in ("lat", "slat", "clat"):
            f, b = med("fio", kind, lat + "_ns", p), med("ringbench", kind, lat + "_ns", p)
            diff = f"{(b / f - 1) * 100:+7.1f}%" if f else "      -"
            print(f"{kind:<6} {'p' + str(p):<4} {lat:<6} {f:>9.1f} {b:>10.1f} {diff}")
        co = med("ringbench", kind, "co_lat_ns", p)
        print(f"{kind:<6} {'p' + str(p):<4} {'co_lat':<6} {'':>9} {co:>10.1f}   (ringbench only: from the intended start)")
# Each round's lat, each tool's spread over its own rounds ((max - min) / median: how far the same
# tool moves from round to round, against which the fio-ringbench difference is to be read), and
# each round's difference (the two runs of a round are back to back, so they share its disturbance).
print("lat per round (µs); each tool's spread over its own rounds, (max - min) / median; each round's diff:")
for kind in ("read", "write"):
    for p in P:
        cells = []
        for tool in TOOLS:
            v = rounds_of(tool, kind, "lat_ns", p)
            spread = (max(v) - min(v)) / statistics.median(v) * 100
            cells.append(f"{tool} " + " ".join(f"{x:.1f}" for x in v) + f" (spread {spread:.0f}%)")
        f, b = rounds_of("fio", kind, "lat_ns", p), rounds_of("ringbench", kind, "lat_ns", p)
        cells.append("diff " + " ".join(f"{(y / x - 1) * 100:+.0f}%" for x, y in zip(f, b)))
        print(f"  {kind:<6} p{p:<3} " + "; ".join(cells))
iops = [statistics.median(load(t, r)[k]["iops"] for r in R) for t in TOOLS for k in ("read", "write")]
print(f"IOPS read/write: fio {iops[0]:.0f}/{iops[1]:.0f}, ringbench {iops[2]:.0f}/{iops[3]:.0f}")
if perf:
    def stat(tool, event):
        vals = []
        for r in R:
            for line in open(f"{d}/{tool}.{r}.perf"):
                f = line.strip().split(",")
                if len(f) > 2 and f[2].startswith(event):
                    vals.append(float(f[0]))
        return statistics.median(vals) if vals else float("nan")
    print("perf stat (whole run, ramp and setup included; medians):")
    for tool in TOOLS:
        cs, ms = stat(tool, "context-switches"), stat(tool, "cpu-clock")
        print(f"  {tool:<10} context switches {cs:>9.0f}  cpu-clock {ms / 1000:>6.2f} s")
PY
