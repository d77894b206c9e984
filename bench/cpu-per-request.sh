#!/usr/bin/env bash
# Server CPU per request, in paired and interleaved runs of two builds (their custodia-bench binaries).
#
#   bench/cpu-per-request.sh BEFORE_BINARY AFTER_BINARY [PAIRS] [SECONDS] [CONNECTIONS] [ROUTES]
#
# ROUTES: space-separated among `none` (the no-work route), `read` (masked read by id) and
# `search` (exact search by mobile); default "none read".
#
# Each run starts `BINARY --customers 10000 --hold FACTS` (BINARY: a custodia-bench build;
# a seeded SQLite vault, tokens and ids written to FACTS), drives it with wrk from a process of its own, and reads the
# server's CPU time (utime + stime of /proc/PID/stat) before and after. It prints, per run and
# route, requests, server CPU per request (µs) and req/s as a ratio to the same run's no-work
# route, and the server's resident memory after the load. Runs alternate before/after so that
# the machine's drift hits both alike.
# Needs wrk (Debian: apt-get install wrk). Loopback only; every run is bounded in time.
set -euo pipefail
before=${1:?before binary}
after=${2:?after binary}
pairs=${3:-3}
seconds=${4:-10}
conns=${5:-64}
routes=${6:-none read}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
hz=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk script: GET paths in turn, with the bearer token.
cat > "$work/read.lua" <<'EOF'
local ids, token, i = {}, nil, 0
function init(args)
  token = args[1]
  for id in string.gmatch(args[2], "[^,]+") do ids[#ids + 1] = id end
end
function request()
  i = i + 1
  return wrk.format("GET", "/v1/customers/" .. ids[(i % #ids) + 1],
    { ["Authorization"] = "Bearer " .. token, ["X-Purpose"] = "customer_service" })
end
EOF

# wrk script: exact searches by mobile in turn (every one a hit).
cat > "$work/search.lua" <<'EOF'
local mobiles, token, i = {}, nil, 0
function init(args)
  token = args[1]
  for m in string.gmatch(args[2], "[^,]+") do mobiles[#mobiles + 1] = m end
end
function request()
  i = i + 1
  return wrk.format("POST", "/v1/customers/search",
    { ["Authorization"] = "Bearer " .. token, ["X-Purpose"] = "customer_service",
      ["Content-Type"] = "application/json" },
    '{"match":{"mobile":"' .. mobiles[(i % #mobiles) + 1] .. '"}}')
end
EOF

run() { # label binary
  local label=$1 bin=$2 facts="$work/facts-$1.json"
  rm -f "$facts"
  "$bin" --customers 10000 --hold "$facts" > "$work/server-$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do [ -s "$facts" ] && break; sleep 0.2; done
  [ -s "$facts" ] || { echo "server $label did not start"; cat "$work/server-$label.log"; exit 1; }
  local base token ids mobiles
  base=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"])' "$facts")
  token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent"])' "$facts")
  ids=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["ids"]))' "$facts")
  mobiles=$(python3 -c 'import json,sys; print(",".join(json.load(open(sys.argv[1]))["mobiles"]))' "$facts")
  # Warm-up, then the measured routes.
  wrk -t1 -c"$conns" -d3s -s "$work/read.lua" "$base" -- "$token" "$ids" > /dev/null
  for route in $routes; do
    local t0 t1 out reqs
    t0=$(cpu_ticks "$pid")
    case $route in
      none) out=$(wrk -t1 -c"$conns" -d"${seconds}s" "$base/_bench/none") ;;
      read) out=$(wrk -t1 -c"$conns" -d"${seconds}s" -s "$work/read.lua" "$base" -- "$token" "$ids") ;;
      search) out=$(wrk -t1 -c"$conns" -d"${seconds}s" -s "$work/search.lua" "$base" -- "$token" "$mobiles") ;;
      *) echo "unknown route $route" >&2; exit 2 ;;
    esac
    t1=$(cpu_ticks "$pid")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
    python3 - "$label" "$route" "$reqs" "$t0" "$t1" "$hz" "$seconds" "${non2xx:-0}" <<'EOF'
import sys
label, route, reqs, t0, t1, hz, secs, bad = sys.argv[1:]
reqs = int(reqs); cpu_us = (int(t1) - int(t0)) * 1e6 / int(hz)
print(f"{label}\t{route}\t{reqs}\t{cpu_us / max(reqs, 1):.1f}\t{reqs / float(secs):.0f}\t{bad}")
EOF
  done
  echo -e "$label\tresident_mb\t$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}

echo -e "run\troute\trequests\tcpu_us_per_req\treq_per_s\tnon_2xx"
for i in $(seq 1 "$pairs"); do
  run "before-$i" "$before"
  run "after-$i" "$after"
done
