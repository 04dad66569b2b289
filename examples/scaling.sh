#!/usr/bin/env bash
# Scaling of ringshard with ringbench: 1..N shards (in-shard load), then 1..M caller threads
# (routed load through N shards). ringbench prints IOPS, speed-up and efficiency per point and
# writes one SVG per sweep (with the ideal, linear line).
#
#   examples/scaling.sh                     # N = M = the CPUs this process may use (nproc)
#   N=8 M=16 REPEAT=3 examples/scaling.sh --dir /mnt/nvme/rb --direct
#
# The points come from the machine: every value up to 8, then powers of two, then N itself
# (2 CPUs: 1,2; 12 CPUs: 1..8,12; 64 CPUs: 1..8,16,32,64). Extra arguments go to both sweeps.
#
# Environment: N, M (default nproc), REPEAT (rounds, default 5), RUN (how long each point runs,
# default "--duration 2s"), OUT (where the SVGs go, default docs), RINGBENCH (a built ringbench;
# default: cargo build --release -p ringbench).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-$(nproc)}
M=${M:-$N}
REPEAT=${REPEAT:-5}
RUN=${RUN:---duration 2s}
OUT=${OUT:-docs}
for v in "$N" "$M" "$REPEAT"; do
  case $v in '' | *[!0-9]* | 0) echo "scaling.sh: N, M and REPEAT must be positive integers (got '$v')" >&2; exit 2 ;; esac
done
if [ -z "${RINGBENCH:-}" ]; then
  cargo build --release --quiet -p ringbench
  RINGBENCH=target/release/ringbench
fi
mkdir -p "$OUT"

# 1,2,..,8, then 16,32,.. below n, then n.
points() {
  local n=$1 v=1 out=""
  while [ "$v" -lt "$n" ]; do
    out+="$v,"
    if [ "$v" -lt 8 ]; then v=$((v + 1)); else v=$((v * 2)); fi
  done
  echo "$out$n"
}

# shellcheck disable=SC2086 # RUN is a list of flags
"$RINGBENCH" --sweep "shards=$(points "$N")" --repeat "$REPEAT" --iodepth 32 $RUN \
  --plot "$OUT/scaling.svg" "$@"
echo
# shellcheck disable=SC2086
"$RINGBENCH" --mode routed --sweep "clients=$(points "$M")" --repeat "$REPEAT" --iodepth 32 $RUN \
  --plot "$OUT/scaling-clients.svg" "$@"
