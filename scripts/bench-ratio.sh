#!/usr/bin/env bash
# Throughput ratios of the audited gateway against its baselines, measured so
# that a shared, noisy machine distorts them as little as possible: every
# variant runs in its own process, the variants take turns for ROUNDS rounds,
# and the best and the median round of each are reported (the best is the
# least disturbed by other work on the machine).
#
#   scripts/bench-ratio.sh checkaction   # gateway/server BenchmarkCheckActionGRPC, 64 clients
#   scripts/bench-ratio.sh extauthz      # extauthz BenchmarkCheckGRPC, 64 clients
#
# The extauthz baseline is the no-op handler on grpc-go's own codec, as anyone
# would write it; noop-codec is the same handler on the gateway's codec
# (extauthz/codec), to show that codec's share of the gateway's ratio.
#
# Four ratios against the first variant (the baseline): best round against
# best round, median against median, the baseline's median CPU per check
# against the variant's (CPU time is the steadiest of these on a shared
# machine; one unusually fast baseline round moves only the first), and the
# paired one: the CPU ratio within each round, where baseline and variant
# ran minutes apart at most, as a median over the rounds with its range.
# Single runs of one binary move by 20-30% within minutes on a shared
# host, so the paired median is the one to quote.
#
# ROUNDS (default 5) and BENCHTIME (default 10s) tune it; VARIANTS (a
# space-separated list, baseline first) runs only those variants; RESULTS
# names a file that keeps every run's variant, checks/s and CPU per check,
# in order, for a closer look. The paired column also gives the middle half
# of the rounds' ratios (25th to 75th percentile), which says more about a
# noisy machine than the range. Runs are long enough
# to reach the audit journal's steady state: its files grow from 1 to 16 MiB,
# and os mode reuses the shared-memory copies of earlier files only from about
# the fourth file on (a 3 s run is mostly warm-up). The benchmarks run
# at GOGC=400, the garbage collector target aa-gateway sets for itself,
# unless GOGC is set (GOGC=100 gives Go's default, for comparison).
set -euo pipefail
export GOGC=${GOGC:-400}
cd "$(dirname "$0")/.."
target=${1:-checkaction}
rounds=${ROUNDS:-5}
benchtime=${BENCHTIME:-10s}
case "$target" in
checkaction)
  pkg=./gateway/server bench=CheckActionGRPC
  variants=(gateway-audit-off memory sqlite-os sqlite-sync)
  ;;
extauthz)
  pkg=./extauthz bench=CheckGRPC
  variants=(noop noop-codec audit-off sqlite-os sqlite-sync)
  ;;
*)
  echo "usage: $0 checkaction|extauthz" >&2
  exit 2
  ;;
esac
if [[ -n "${VARIANTS:-}" ]]; then
  read -r -a variants <<<"$VARIANTS"
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go test -c -o "$bin/bench.test" "$pkg"
out="$bin/results"
[[ -n "${RESULTS:-}" ]] && : >"$RESULTS"
for ((r = 1; r <= rounds; r++)); do
  for v in "${variants[@]}"; do
    # The test binary runs in the package directory, as go test does.
    (cd "$pkg" && "$bin/bench.test" -test.run '^$' -test.bench "$bench/^$v\$/clients=64\$" -test.benchtime "$benchtime") |
      awk -v v="$v" '/^Benchmark/ { for (i = 1; i < NF; i++) { if ($(i+1) == "checks/s") t = $i; if ($(i+1) == "cpu-µs/check") c = $i } print v, t, c }' >>"$out"
  done
done
base=${variants[0]}
echo "GOGC=$GOGC, $rounds rounds of $benchtime"
awk -v base="$base" -v list="${variants[*]}" '
  { n[$1]++; t[$1, n[$1]] = $2; c[$1, n[$1]] = $3 }
  END {
    printf "%-18s %10s %10s %10s %12s %14s %10s %s\n", "variant", "best/s", "median/s", "best/base", "median/base", "median cpu-µs", "cpu ratio", "paired (range; middle half)"
    k = split(list, order, " ")
    # best and median per variant
    for (i = 1; i <= k; i++) {
      v = order[i]; m = n[v]
      for (a = 1; a <= m; a++) { s[a] = t[v, a] + 0; u[a] = c[v, a] + 0 }
      for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) { if (s[b] < s[a]) { x = s[a]; s[a] = s[b]; s[b] = x } if (u[b] < u[a]) { x = u[a]; u[a] = u[b]; u[b] = x } }
      best[v] = s[m]; med[v] = s[int((m + 1) / 2)]; cmed[v] = u[int((m + 1) / 2)]
      # paired: the CPU ratio within each round (the baseline and the
      # variant ran minutes apart at most), then the median over rounds
      for (a = 1; a <= m; a++) p[a] = c[base, a] / c[v, a]
      for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (p[b] < p[a]) { x = p[a]; p[a] = p[b]; p[b] = x }
      pmed[v] = p[int((m + 1) / 2)]; plo[v] = p[1]; phi[v] = p[m]
      pq1[v] = p[int((m + 3) / 4)]; pq3[v] = p[m + 1 - int((m + 3) / 4)]
    }
    for (i = 1; i <= k; i++) {
      v = order[i]
      printf "%-18s %10.0f %10.0f %9.0f%% %11.0f%% %14.1f %9.0f%% %4.0f%% (%.0f-%.0f; %.0f-%.0f)\n", v, best[v], med[v], 100 * best[v] / best[base], 100 * med[v] / med[base], cmed[v], 100 * cmed[base] / cmed[v], 100 * pmed[v], 100 * plo[v], 100 * phi[v], 100 * pq1[v], 100 * pq3[v]
    }
  }' "$out"
if [[ -n "${RESULTS:-}" ]]; then
  cp "$out" "$RESULTS"
fi
