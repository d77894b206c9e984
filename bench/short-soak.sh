# Sourced by bench/fsync-trace.sh and bench/writeback-trace.sh: starts a short soak at a fixed
# rate in the background and waits until the load is being held.
#
#   start_short_soak BINARY OUT MINUTES RATE
#
# Runs `BINARY --soak MINUTES --soak-rate RATE --soak-peak-seconds 5` with its report in OUT.md
# and its progress in OUT.log (OUT.* removed first); sets `bench` to its process id.
start_short_soak() {
  local binary=$1 out=$2 minutes=$3 rate=$4
  rm -f "$out".*
  MALLOC_ARENA_MAX=2 "$binary" --soak "$minutes" --soak-rate "$rate" --soak-peak-seconds 5 \
    --output "$out.md" >"$out.log" 2>&1 &
  bench=$!
  for _ in $(seq 1 90); do
    grep -q "holding" "$out.log" && return 0
    sleep 2
  done
  echo "the soak never started holding its load (see $out.log)" >&2
  return 1
}
