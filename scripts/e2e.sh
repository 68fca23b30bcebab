#!/usr/bin/env bash
# The end-to-end story (`make e2e`; also the last part of `make test`):
# real aa-gateway replicas on PostgreSQL and Redis, aa-runtime, the example
# agent and aasm, built from this checkout. Starts throwaway PostgreSQL and
# Redis unless AA_TEST_POSTGRES_URL and AA_TEST_REDIS_URL are already set.
# As root, the kernel (eBPF) step runs too; otherwise it skips and says why.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${AA_TEST_POSTGRES_URL:-}" ] || [ -z "${AA_TEST_REDIS_URL:-}" ]; then
  scripts/testdb.sh start
  eval "$(scripts/testdb.sh env)"
  trap 'scripts/testdb.sh stop || true' EXIT
fi
echo "== e2e story"
go test -tags e2e -count=1 -v -timeout 15m ./e2e/ 2>&1 | tee "${E2E_LOG:-/dev/null}" | grep -vE '^=== (RUN|PAUSE|CONT)'
