#!/usr/bin/env bash
# The project's test command (`make test`, and what .ci/run calls):
# starts throwaway PostgreSQL and Redis when this machine has them, runs vet,
# the whole suite with the race detector, and every fuzz target briefly.
# Tests that need a service or root skip with the reason when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

started=0
if scripts/testdb.sh start; then
  eval "$(scripts/testdb.sh env)"
  started=1
  trap 'scripts/testdb.sh stop || true' EXIT
else
  echo "test: PostgreSQL/Redis could not be started here; their tests will skip (install postgresql and redis-server)" >&2
fi

# The second independent xDS client (@grpc/grpc-js-xds) for xds/grpcjs_test.go.
if command -v npm >/dev/null 2>&1 && [ ! -d xds/testdata/grpcjs/node_modules ]; then
  (cd xds/testdata/grpcjs && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "test: npm ci for the grpc-js xDS client failed; that test will skip" >&2
fi

echo "== go vet"
go vet ./...
echo "== go test -race"
go test -race -count=1 -timeout 25m ./...
echo "== allocation checks (they skip under -race)"
go test -count=1 -run 'Alloc' ./scan ./policy
if [ "$started" = 1 ]; then
  scripts/e2e.sh
fi
echo "== fuzz (bounded)"
FUZZTIME=${FUZZTIME:-10s} scripts/fuzz.sh
[ "$started" = 1 ] && echo "test: ran against PostgreSQL ($AA_TEST_POSTGRES_URL) and Redis ($AA_TEST_REDIS_URL)"
echo "test: all passed"
