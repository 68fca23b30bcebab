#!/usr/bin/env bash
# What os durability's background flush costs the disk, and how often it is
# late: starts bin/aa-gateway on a fresh SQLite store in os durability (the
# SQLite URL's flush= interval from FLUSH, default: the store's own), drives
# it with bin/aa-load (ext_authz checks at RATE per second for DURATION;
# RATE=0 is a closed loop), and prints the disk requests the run caused
# (writes and cache flushes completed, from /proc/diskstats for the device
# holding the store) and the gateway's count of flushes that ended later
# than the flush window.
#
#   make build && scripts/os-flush.sh                 # the default interval
#   FLUSH=5ms scripts/os-flush.sh                     # the default until 2026-11-27
#   RATE=0 DURATION=20s scripts/os-flush.sh           # closed loop
#
# Other work on the same disk counts too: run it on a quiet machine. The
# gateway listens on 127.0.0.1:50061 and :7761 so it does not collide with
# one started by make run.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-1000}
duration=${DURATION:-15s}
query="durability=os"
[[ -n "${FLUSH:-}" ]] && query+="&flush=$FLUSH"
for b in aa-gateway aa-load; do
  [[ -x bin/$b ]] || { echo "bin/$b is missing: run make build first" >&2; exit 2; }
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/aa-os-flush.XXXXXX")
gw=""
cleanup() {
  [[ -n "$gw" ]] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/store"
dev=$(basename "$(findmnt -no SOURCE -T "$dir/store")")
counts() { awk -v d="$dev" '$3 == d { print $8, ($19 == "" ? 0 : $19) }' /proc/diskstats; }
if [[ -z "$(counts)" ]]; then
  echo "no /proc/diskstats line for $dev (the store's device): cannot count disk requests" >&2
  exit 2
fi
./bin/aa-gateway --agent-auth off --store "sqlite:$dir/store/aa.db?$query" \
  --grpc-addr 127.0.0.1:50061 --api-addr 127.0.0.1:7761 >"$dir/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 100); do
  curl -sf 127.0.0.1:7761/readyz >/dev/null && break
  sleep 0.1
done
curl -sf 127.0.0.1:7761/readyz >/dev/null || { cat "$dir/gateway.log" >&2; exit 1; }
read -r w0 f0 < <(counts)
start=$(date +%s%N)
args=(-addr 127.0.0.1:50061 -metrics http://127.0.0.1:7761/metrics -target extauthz -duration "$duration")
[[ "$rate" != 0 ]] && args+=(-rate "$rate")
./bin/aa-load "${args[@]}"
read -r w1 f1 < <(counts)
ms=$((($(date +%s%N) - start) / 1000000))
kill -TERM "$gw"
wait "$gw" || true
gw=""
echo
echo "disk $dev over $((ms / 1000)) s (warm-up included): $(((w1 - w0) * 1000 / ms)) writes/s, $(((f1 - f0) * 1000 / ms)) cache flushes/s"
grep -E 'gateway serving|durability window' "$dir/gateway.log" | sed 's/^time=[^ ]* //'
