#!/usr/bin/env bash
# examples/object_server against nginx (2 workers, sendfile on) serving the same directory, with
# wrk -t2 -c64, interleaved over several rounds; prints the median req/s, MB/s and p99 of each
# side and the ratio (server / nginx).
#
#   examples/bench_object_server.sh [--rounds N] [--duration S] [--cold-duration S]
#                                   [--dir DIR] [--cold-objects N] [--cases "hot4k hot1m cold4k"]
#                                   [--remove-objects]
#                                   [-- extra object_server flags]
#
# Cases (each a random key per request, from a wrk Lua script):
#   hot4k   1,000 objects of 4 KiB, page cache warm (read once before, and a 2 s warm-up run)
#   hot1m   64 objects of 1 MiB, page cache warm
#   cold4k  --cold-objects (default 200,000) objects of 4 KiB; before every run the page cache,
#           dentries and inodes are dropped (echo 3 > /proc/sys/vm/drop_caches) and the server is
#           restarted (empty handle cache) with --direct
# Needs root (drop_caches, nginx as root). Installs nginx-light and wrk with apt-get if missing.
# The objects are made once under DIR (default /var/tmp/ringshard-objbench, ~900 MB) and kept for
# reruns; --remove-objects deletes DIR on exit. nginx, the server and the temporary directory
# (config, pid, logs, Lua scripts) are always cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
DUR=10
COLD_DUR=5
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

cargo build --release --quiet --example object_server
BIN=$PWD/target/release/examples/object_server

TMP=$(mktemp -d /tmp/objbench.XXXXXX)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
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

NGINX_PORT=18481
SERVER_PORT=18482
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

start_server() { # flags...
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; fi
  "$BIN" --root "$DIR" --listen "127.0.0.1:$SERVER_PORT" "$@" ${EXTRA[@]+"${EXTRA[@]}"} \
    > "$TMP/server.out" 2> "$TMP/server.err" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    grep -q "^listening on" "$TMP/server.out" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "object_server did not start:" >&2; cat "$TMP/server.err" >&2; exit 1
}

lua() { # prefix count
  cat > "$TMP/$1.lua" <<EOF
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function init(args) math.randomseed(os.time() * 7919 + tid * 104729) end
function request() return wrk.format("GET", "/$1" .. math.random(0, $2 - 1)) end
EOF
  echo "$TMP/$1.lua"
}

# Runs wrk; prints "req/s MB/s p99_ms errors" (errors: socket errors, timeouts and non-2xx
# answers, which a stall shows as).
run_wrk() { # port lua duration
  wrk -t2 -c64 -d"$3"s --latency -s "$2" "http://127.0.0.1:$1/" > "$TMP/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    function mb(v) { if (v ~ /GB$/) return v * 1024; if (v ~ /MB$/) return v + 0; if (v ~ /KB$/) return v / 1024; return v / 1048576 }
    /Requests\/sec/ { r = $2 } /Transfer\/sec/ { t = mb($2) } $1 == "99%" { p = ms($2) }
    /Non-2xx/ { bad += $NF }
    /Socket errors/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.1f %.2f %d\n", r, t, p, bad }
  ' "$TMP/wrk.out"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

declare -A RES RATIO
for case in $CASES; do
  case $case in
    hot4k) prefix=h4k-; count=1000 ;;
    hot1m) prefix=m1-; count=64 ;;
    cold4k) prefix=c4k-; count=$COLD_N ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  script=$(lua "$prefix" "$count")
  if [ "$case" != cold4k ]; then
    start_server
    cat "$DIR/$prefix"* > /dev/null
    run_wrk $NGINX_PORT "$script" 2 > /dev/null
    run_wrk $SERVER_PORT "$script" 2 > /dev/null
  fi
  for round in $(seq "$ROUNDS"); do
    # Alternate who goes first.
    if [ $((round % 2)) -eq 1 ]; then order="nginx server"; else order="server nginx"; fi
    for who in $order; do
      if [ "$case" = cold4k ]; then
        [ "$who" = server ] && start_server --direct
        drop_caches
        dur=$COLD_DUR
      else
        dur=$DUR
      fi
      port=$NGINX_PORT; [ "$who" = server ] && port=$SERVER_PORT
      out=$(run_wrk "$port" "$script" "$dur")
      RES[$case,$who]="${RES[$case,$who]:-}$out;"
      printf "%-7s round %d %-7s %s\n" "$case" "$round" "$who" "$out" >&2
    done
    # This round's ratio (server / nginx), from the two runs next to each other.
    n=${RES[$case,nginx]%;}; n=${n##*;}; v=${RES[$case,server]%;}; v=${v##*;}
    RATIO[$case]="${RATIO[$case]:-}$(awk -v a="${v%% *}" -v b="${n%% *}" 'BEGIN { print (b > 0 ? a / b : 0) }');"
  done
done

median() { # "a b c;a b c;..." field
  echo "$1" | tr ';' '\n' | awk -v f="$2" 'NF { print $f }' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "wrk -t2 -c64, $ROUNDS interleaved rounds (median), ${DUR}s hot / ${COLD_DUR}s cold; $(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ratio: of the medians; paired: the median of each round's ratio; err: wrk errors, all rounds"
printf "%-7s | %12s %12s %7s %7s | %10s %10s %7s | %9s %9s | %5s %5s\n" case "nginx req/s" "server req/s" ratio paired "nginx MB/s" "server MB/s" ratio "nginx p99" "srv p99" "n err" "s err"
for case in $CASES; do
  nr=$(median "${RES[$case,nginx]}" 1); sr=$(median "${RES[$case,server]}" 1)
  nm=$(median "${RES[$case,nginx]}" 2); sm=$(median "${RES[$case,server]}" 2)
  np=$(median "${RES[$case,nginx]}" 3); sp=$(median "${RES[$case,server]}" 3)
  pr=$(median "${RATIO[$case]}" 1)
  ne=$(echo "${RES[$case,nginx]}" | tr ';' '\n' | awk 'NF { s += $4 } END { print s + 0 }')
  se=$(echo "${RES[$case,server]}" | tr ';' '\n' | awk 'NF { s += $4 } END { print s + 0 }')
  printf "%-7s | %12.0f %12.0f %6.2fx %6.2fx | %10.1f %10.1f %6.2fx | %7.2fms %7.2fms | %5d %5d\n" \
    "$case" "$nr" "$sr" "$(awk -v a="$sr" -v b="$nr" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$pr" \
    "$nm" "$sm" "$(awk -v a="$sm" -v b="$nm" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$np" "$sp" "$ne" "$se"
done
