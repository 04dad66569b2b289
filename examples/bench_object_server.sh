#!/usr/bin/env bash
# examples/object_server (each engine in ENGINES) against nginx (2 workers, sendfile on) serving
# the same directory, with wrk -t2 -c64, interleaved over ROUNDS rounds. Per round and as medians:
# requests per second, MB/s, p99, and the CPU time per request of each server's processes (user +
# system, from /proc/PID/stat before and after the run; nginx: its master and workers).
#
#   [ENGINES="tokio shards"] [ROUNDS=5] examples/bench_object_server.sh
#       [--rounds N] [--duration S] [--cold-duration S] [--dir DIR] [--cold-objects N]
#       [--cases "hot4k hot1m cold4k"] [--remove-objects] [-- extra object_server flags]
#
# PORT_BASE: nginx listens there, the engines on the ports after it (default 18481).
# ENGINES: the server's --engine values to run (default "tokio shards"); one the binary refuses
# is skipped, and the script says so. ROUNDS (or --rounds): default 5. DURATION and COLD_DURATION
# (or --duration, --cold-duration): seconds per hot and cold run (default 10 and 5).
#
# Cases (each a random key per request, from a wrk Lua script):
#   hot4k   1,000 objects of 4 KiB, page cache warm (read once before, and a 2 s warm-up run)
#   hot1m   64 objects of 1 MiB, page cache warm
#   cold4k  --cold-objects (default 200,000) objects of 4 KiB; before every run the page cache,
#           dentries and inodes are dropped (echo 3 > /proc/sys/vm/drop_caches) and the server is
#           restarted (empty handle cache). No --direct: the server chooses O_DIRECT per object
#           (--direct auto); pass `-- --direct` to force it
# Needs root (drop_caches, nginx as root). Installs nginx-light and wrk with apt-get if missing.
# The binary is built with `cargo build --release` and run from where cargo says it put it
# (CARGO_TARGET_DIR and build.target-dir included). The objects are made once under DIR (default
# /var/tmp/ringshard-objbench, ~900 MB) and kept for reruns; --remove-objects deletes DIR on
# exit. nginx, the servers and the temporary directory (config, pid, logs, Lua scripts) are
# always cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DUR=${DURATION:-10}
COLD_DUR=${COLD_DURATION:-5}
ENGINES=${ENGINES:-"tokio shards"}
DIR=/var/tmp/ringshard-objbench
COLD_N=200000
CASES="hot4k hot1m cold4k"
REMOVE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DUR=$2; shift 2 ;;
    --cold-duration) COLD_DUR=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --cold-objects) COLD_N=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --remove-objects) REMOVE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The binary where cargo put it: the build's own report names the executable.
BIN=$(cargo build --release --quiet --example object_server --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "object_server" and m.get("executable"):
        print(m["executable"])
')
[ -x "$BIN" ] || { echo "cargo did not report the object_server binary" >&2; exit 1; }

# The engines this binary takes.
RUN_ENGINES=()
for e in $ENGINES; do
  # A taken engine fails on the missing root instead (and listens on nothing).
  probe=$("$BIN" --engine "$e" --root /nonexistent-objbench-probe 2>&1 || true)
  if [[ $probe == *"invalid value"* ]]; then
    echo "skipping engine $e: $BIN refuses --engine $e" >&2
  else
    RUN_ENGINES+=("$e")
  fi
done
[ ${#RUN_ENGINES[@]} -gt 0 ] || { echo "no engine to run (ENGINES=\"$ENGINES\")" >&2; exit 1; }

TMP=$(mktemp -d /tmp/objbench.XXXXXX)
declare -A PID PORT
stop_server() { # engine
  local p=${PID[$1]:-}
  if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  PID[$1]=
}
cleanup() {
  for e in "${RUN_ENGINES[@]}"; do stop_server "$e"; done
  if [ -f "$TMP/nginx.pid" ]; then kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true; sleep 0.3; fi
  rm -rf "$TMP"
  if [ "$REMOVE" = 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT INT TERM

# The objects: made once (a marker file records what is there).
mkdir -p "$DIR"
if [ "$(cat "$DIR/.made" 2>/dev/null)" != "v1 $COLD_N" ]; then
  echo "making objects in $DIR (once)..."
  python3 - "$DIR" "$COLD_N" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(1000):
    with open(f"{d}/h4k-{i}", "wb") as f: f.write(os.urandom(4096))
for i in range(64):
    with open(f"{d}/m1-{i}", "wb") as f: f.write(os.urandom(1 << 20))
for i in range(n):
    with open(f"{d}/c4k-{i}", "wb") as f: f.write(os.urandom(4096))
EOF
  sync
  echo "v1 $COLD_N" > "$DIR/.made"
fi

# PORT_BASE (default 18481): nginx's port; the engines take the next ones. Two benches on one
# machine need different bases (the shards engine's listeners use SO_REUSEPORT: a second server
# on the same port would share its connections).
NGINX_PORT=${PORT_BASE:-18481}
i=0
for e in "${RUN_ENGINES[@]}"; do PORT[$e]=$((NGINX_PORT + 1 + i)); i=$((i + 1)); done
mkdir -p "$TMP/nginx"
cat > "$TMP/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $TMP/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$NGINX_PORT; root $DIR; location / { } }
}
EOF
nginx -c "$TMP/nginx.conf"

start_server() { # engine flags...
  local e=$1; shift
  stop_server "$e"
  "$BIN" --engine "$e" --root "$DIR" --listen "127.0.0.1:${PORT[$e]}" "$@" ${EXTRA[@]+"${EXTRA[@]}"} \
    > "$TMP/server-$e.out" 2> "$TMP/server-$e.err" &
  PID[$e]=$!
  for _ in $(seq 100); do
    grep -q "^listening on" "$TMP/server-$e.out" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "object_server --engine $e did not start:" >&2; cat "$TMP/server-$e.err" >&2; exit 1
}

# The processes of a side: the server's one, or nginx's master and workers.
pids_of() { # who
  if [ "$1" = nginx ]; then
    local m; m=$(cat "$TMP/nginx.pid"); echo "$m" $(pgrep -P "$m" || true)
  else
    echo "${PID[$1]}"
  fi
}

# User + system CPU ticks of these processes (all their threads), from /proc/PID/stat.
cpu_ticks() { # pids...
  local t=0 p
  for p in "$@"; do
    # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

lua() { # prefix count
  cat > "$TMP/$1.lua" <<EOF
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function init(args) math.randomseed(os.time() * 7919 + tid * 104729) end
function request() return wrk.format("GET", "/$1" .. math.random(0, $2 - 1)) end
EOF
  echo "$TMP/$1.lua"
}

# Runs wrk against a side; prints "req/s MB/s p99_ms cpu_us_per_req errors client_us_per_req"
# (errors: socket errors, timeouts and non-2xx answers, which a stall shows as; client: wrk's own
# user + system CPU per request: the two share the machine's CPUs, so what a server's way of
# sending costs its client shows in the server's throughput).
run_wrk() { # who port lua duration
  local pids t0 t1 client
  pids=$(pids_of "$1")
  # shellcheck disable=SC2086
  t0=$(cpu_ticks $pids)
  client=$( { TIMEFORMAT='%U %S'; time wrk -t2 -c64 -d"$4"s --latency -s "$3" "http://127.0.0.1:$2/" > "$TMP/wrk.out" 2> "$TMP/wrk.err"; } 2>&1 )
  # shellcheck disable=SC2086
  t1=$(cpu_ticks $pids)
  awk -v ticks=$((t1 - t0)) -v hz="$HZ" -v client="$client" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    function mb(v) { if (v ~ /GB$/) return v * 1024; if (v ~ /MB$/) return v + 0; if (v ~ /KB$/) return v / 1024; return v / 1048576 }
    /Requests\/sec/ { r = $2 } /Transfer\/sec/ { t = mb($2) } $1 == "99%" { p = ms($2) }
    / requests in / { n = $1 }
    /Non-2xx/ { bad += $NF }
    /Socket errors/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
    END {
      split(client, c, " ")
      printf "%.0f %.1f %.2f %.1f %d %.1f\n", r, t, p, (n > 0 ? ticks / hz / n * 1e6 : 0), bad, (n > 0 ? (c[1] + c[2]) / n * 1e6 : 0)
    }
  ' "$TMP/wrk.out"
}

port_of() { if [ "$1" = nginx ]; then echo $NGINX_PORT; else echo "${PORT[$1]}"; fi; }

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

SIDES=(nginx "${RUN_ENGINES[@]}")
NS=${#SIDES[@]}
declare -A RES RATIO
echo "per run: req/s MB/s p99_ms cpu_us/req errors client_cpu_us/req" >&2
for case in $CASES; do
  case $case in
    hot4k) prefix=h4k-; count=1000 ;;
    hot1m) prefix=m1-; count=64 ;;
    cold4k) prefix=c4k-; count=$COLD_N ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  script=$(lua "$prefix" "$count")
  if [ "$case" != cold4k ]; then
    cat "$DIR/$prefix"* > /dev/null
    run_wrk nginx $NGINX_PORT "$script" 2 > /dev/null
    for e in "${RUN_ENGINES[@]}"; do
      start_server "$e"
      run_wrk "$e" "${PORT[$e]}" "$script" 2 > /dev/null
    done
  fi
  for round in $(seq "$ROUNDS"); do
    # Rotate who goes first.
    order=()
    for k in $(seq 0 $((NS - 1))); do order+=("${SIDES[$(( (k + round - 1) % NS ))]}"); done
    for who in "${order[@]}"; do
      if [ "$case" = cold4k ]; then
        [ "$who" != nginx ] && start_server "$who"
        drop_caches
        dur=$COLD_DUR
      else
        dur=$DUR
      fi
      out=$(run_wrk "$who" "$(port_of "$who")" "$script" "$dur")
      RES[$case,$who]="${RES[$case,$who]:-}$out;"
      printf "%-7s round %d %-7s %s\n" "$case" "$round" "$who" "$out" >&2
    done
    # This round's ratio of each engine to nginx (req/s), from runs next to each other.
    n=${RES[$case,nginx]%;}; n=${n##*;}
    for e in "${RUN_ENGINES[@]}"; do
      v=${RES[$case,$e]%;}; v=${v##*;}
      RATIO[$case,$e]="${RATIO[$case,$e]:-}$(awk -v a="${v%% *}" -v b="${n%% *}" 'BEGIN { print (b > 0 ? a / b : 0) }');"
    done
  done
  if [ "$case" = cold4k ]; then for e in "${RUN_ENGINES[@]}"; do stop_server "$e"; done; fi
done

median() { # "a b c;a b c;..." field
  echo "$1" | tr ';' '\n' | awk -v f="$2" 'NF { print $f }' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "wrk -t2 -c64, $ROUNDS interleaved rounds (median), ${DUR}s hot / ${COLD_DUR}s cold; $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "engines: ${RUN_ENGINES[*]}; x nginx: the ratio of the medians (paired: the median of each round's ratio); CPU: user+system of the side's processes per request; client: wrk's per request; err: wrk errors, all rounds"
printf "%-7s %-7s | %9s %7s %7s | %9s | %8s | %10s | %10s | %5s\n" case side "req/s" "x nginx" paired "MB/s" "p99 ms" "CPU us/req" "client us" err
for case in $CASES; do
  nr=$(median "${RES[$case,nginx]}" 1)
  for who in "${SIDES[@]}"; do
    r=$(median "${RES[$case,$who]}" 1); m=$(median "${RES[$case,$who]}" 2)
    p=$(median "${RES[$case,$who]}" 3); c=$(median "${RES[$case,$who]}" 4)
    cl=$(median "${RES[$case,$who]}" 6)
    err=$(echo "${RES[$case,$who]}" | tr ';' '\n' | awk 'NF { s += $5 } END { print s + 0 }')
    if [ "$who" = nginx ]; then x="-"; pr="-"; else
      x=$(awk -v a="$r" -v b="$nr" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')
      pr=$(awk -v v="$(median "${RATIO[$case,$who]}" 1)" 'BEGIN { printf "%.2fx", v }')
    fi
    printf "%-7s %-7s | %9.0f %7s %7s | %9.1f | %8.2f | %10.1f | %10.1f | %5d\n" "$case" "$who" "$r" "$x" "$pr" "$m" "$p" "$c" "$cl" "$err"
  done
done
