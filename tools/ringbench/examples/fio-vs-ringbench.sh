#!/usr/bin/env bash
# fio and ringbench on the same workload, same file, page cache warm, same rate: the fio job
# zipf-open-loop.fio beside its ringbench equivalent, interleaved over ROUNDS rounds, each tool's
# per-kind p50 and p99 of lat, slat and clat printed side by side (medians over the rounds).
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
#   tools/ringbench/examples/fio-vs-ringbench.sh     # 3 rounds of 10 s per tool, 64k, 5000 IOPS
#   ROUNDS=5 RUNTIME=20 BS=4k RATE=10000 ENGINE=ringshard DIR=/var/tmp/x tools/ringbench/examples/fio-vs-ringbench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ROUNDS=${ROUNDS:-3}
export RUNTIME=${RUNTIME:-10}
export BS=${BS:-64k}
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
rb_args=(--dir "$DIR" --cores 1 --files 1 --size 256m --rw randrw --rwmixread 70 --bs "$BS"
  --iodepth 8 --random-distribution zipf:1.2 --rate-iops "$RATE" --ramp-time 2 --runtime "$RUNTIME"
  --percentiles 50,99 --engine "$ENGINE" --rate-wait "$RATE_WAIT" --rate-per-direction
  --output-format json --quiet)
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
# Creates and fills the file (ringbench.0.dat) once; both tools then use it, warm.
"$RINGBENCH" --dir "$DIR" --cores 1 --files 1 --size 256m --ops 1 --quiet >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  cat "$DIR/ringbench.0.dat" >/dev/null   # page cache warm for both
  perf_of "$DIR/fio.$r.perf" "${nice[@]}" fio "$here/zipf-open-loop.fio" --output-format=json >"$DIR/fio.$r.json"
  perf_of "$DIR/ringbench.$r.perf" "${nice[@]}" "$RINGBENCH" "${rb_args[@]}" >"$DIR/ringbench.$r.json"
  echo "round $r/$ROUNDS done; $(uptime)" >&2
done
echo "load after: $(uptime)" >&2
python3 - "$DIR" "$ROUNDS" "$ENGINE" "$RATE_WAIT" "$PERF" <<'PY'
import json, statistics, sys
d, rounds, engine, wait, perf = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
R = range(1, rounds + 1)
def load(tool, r):
    return json.load(open(f"{d}/{tool}.{r}.json"))["jobs"][0]
def pct(job, kind, lat, p):
    block = job[kind].get(lat)
    return None if block is None else block["percentile"][f"{p:.6f}"] / 1000.0
def med(tool, kind, lat, p):
    v = [pct(load(tool, r), kind, lat, p) for r in R]
    return None if None in v else statistics.median(v)
print(f"medians of {rounds} interleaved round(s); µs; ringbench --engine {engine} --rate-wait {wait}")
print("both: slat prepared -> submit returned, clat -> reaped, lat = slat + clat (fio's definitions)")
print(f"{'kind':<6} {'pct':<4} {'':<5} {'fio':>9} {'ringbench':>10} {'diff':>8}")
for kind in ("read", "write"):
    for p in (50, 99):
        for lat in ("lat", "slat", "clat"):
            f, b = med("fio", kind, lat + "_ns", p), med("ringbench", kind, lat + "_ns", p)
            diff = f"{(b / f - 1) * 100:+7.1f}%" if f else "      -"
            print(f"{kind:<6} {'p' + str(p):<4} {lat:<5} {f:>9.1f} {b:>10.1f} {diff}")
        co = med("ringbench", kind, "co_lat_ns", p)
        print(f"{kind:<6} {'p' + str(p):<4} {'co_lat':<6} {'':>8} {co:>10.1f}   (ringbench only: from the intended start)")
iops = [statistics.median(load(t, r)[k]["iops"] for r in R) for t in ("fio", "ringbench") for k in ("read", "write")]
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
    for tool in ("fio", "ringbench"):
        cs, ms = stat(tool, "context-switches"), stat(tool, "cpu-clock")
        print(f"  {tool:<10} context switches {cs:>9.0f}  cpu-clock {ms / 1000:>6.2f} s")
PY
