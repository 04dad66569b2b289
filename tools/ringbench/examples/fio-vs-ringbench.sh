#!/usr/bin/env bash
# fio and ringbench on the same workload, same file, page cache warm, same rate: the fio job
# zipf-open-loop.fio beside its ringbench equivalent, interleaved over ROUNDS rounds, each tool's
# per-kind p50 and p99 printed side by side (medians over the rounds).
#
# fio counts latency from when it issues an I/O; so does ringbench's clat. ringbench's lat also
# counts from the intended start (coordinated omission corrected): the extra is how late the
# schedule's starts went out, which fio does not report.
#
#   tools/ringbench/examples/fio-vs-ringbench.sh     # 3 rounds of 10 s per tool, 64k, 5000 IOPS
#   ROUNDS=5 RUNTIME=20 BS=4k RATE=10000 ENGINE=raw-uring DIR=/var/tmp/x tools/ringbench/examples/fio-vs-ringbench.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ROUNDS=${ROUNDS:-3}
export RUNTIME=${RUNTIME:-10}
export BS=${BS:-64k}
RATE=${RATE:-5000}
export RATE_R=$((RATE * 70 / 100)) RATE_W=$((RATE - RATE * 70 / 100))
export DIR=${DIR:-$(mktemp -d /tmp/fio-vs-ringbench.XXXXXX)}
RINGBENCH=${RINGBENCH:-}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed to read the JSON" >&2; exit 2; }
if [ -z "$RINGBENCH" ]; then
  cargo build --release -q -p ringbench --manifest-path "$here/../../../Cargo.toml"
  RINGBENCH="$here/../../../target/release/ringbench"
fi
mkdir -p "$DIR"
# The ringbench equivalent of zipf-open-loop.fio (--rate-iops is per load generator: one here).
rb_args=(--dir "$DIR" --cores 1 --files 1 --size 256m --rw randrw --rwmixread 70 --bs "$BS"
  --iodepth 8 --random-distribution zipf:1.2 --rate-iops "$RATE" --ramp-time 2 --runtime "$RUNTIME"
  --percentiles 50,99 --engine "${ENGINE:-ringshard}" --output-format json --quiet)
# Creates and fills the file (ringbench.0.dat) once; both tools then use it, warm.
"$RINGBENCH" --dir "$DIR" --cores 1 --files 1 --size 256m --ops 1 --quiet >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  cat "$DIR/ringbench.0.dat" >/dev/null   # page cache warm for both
  fio "$here/zipf-open-loop.fio" --output-format=json >"$DIR/fio.$r.json"
  "$RINGBENCH" "${rb_args[@]}" >"$DIR/ringbench.$r.json"
  echo "round $r/$ROUNDS done" >&2
done
python3 - "$DIR" "$ROUNDS" <<'PY'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def load(tool, r):
    return json.load(open(f"{d}/{tool}.{r}.json"))["jobs"][0]
def pct(job, kind, lat, p):
    return job[kind][lat]["percentile"][f"{p:.6f}"] / 1000.0
rows = []
for kind in ("read", "write"):
    for p in (50, 99):
        fio = statistics.median(pct(load("fio", r), kind, "lat_ns", p) for r in range(1, rounds + 1))
        clat = statistics.median(pct(load("ringbench", r), kind, "clat_ns", p) for r in range(1, rounds + 1))
        lat = statistics.median(pct(load("ringbench", r), kind, "lat_ns", p) for r in range(1, rounds + 1))
        rows.append((kind, f"p{p}", fio, clat, (clat / fio - 1) * 100, lat))
iops = [(statistics.median(load(t, r)[k]["iops"] for r in range(1, rounds + 1))) for t in ("fio", "ringbench") for k in ("read", "write")]
print(f"medians of {rounds} interleaved round(s); µs; fio lat and ringbench clat both count from the issue")
print(f"{'kind':<6} {'pct':<4} {'fio lat':>9} {'ringbench clat':>15} {'diff':>7} {'ringbench lat (CO corrected)':>29}")
for k, p, f, c, diff, l in rows:
    print(f"{k:<6} {p:<4} {f:>9.1f} {c:>15.1f} {diff:>+6.1f}% {l:>29.1f}")
print(f"IOPS read/write: fio {iops[0]:.0f}/{iops[1]:.0f}, ringbench {iops[2]:.0f}/{iops[3]:.0f}")
PY
