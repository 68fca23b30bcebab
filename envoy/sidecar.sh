#!/bin/sh
# Runs an Envoy sidecar for one agent: renders envoy/bootstrap.yaml (or, with
# --static, envoy/static.yaml) from the environment and execs envoy.
#
#   AA_AGENT_ID=acme/research/researcher-1 AA_GATEWAY_HOST=aa-gateway envoy/sidecar.sh
#
# Extra arguments go to envoy. ENVOY_BIN picks the binary (default: envoy).
set -eu
dir=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
template=$dir/bootstrap.yaml
if [ "${1:-}" = "--static" ]; then
  template=$dir/static.yaml
  shift
fi
: "${AA_AGENT_ID:?set AA_AGENT_ID to the agent id org/team/agent}"
case $AA_AGENT_ID in
  */*/*/*|/*|*//*|*/) echo "sidecar.sh: AA_AGENT_ID=$AA_AGENT_ID is not org/team/agent" >&2; exit 2 ;;
  */*/*) ;;
  *) echo "sidecar.sh: AA_AGENT_ID=$AA_AGENT_ID is not org/team/agent" >&2; exit 2 ;;
esac
AA_ORG=${AA_AGENT_ID%%/*}
rest=${AA_AGENT_ID#*/}
AA_TEAM=${rest%%/*}
AA_AGENT=${rest#*/}
: "${AA_GATEWAY_HOST:=127.0.0.1}" "${AA_GATEWAY_PORT:=50051}" "${AA_ENVOY_ADMIN_PORT:=9901}" "${AA_EGRESS_PORT:=15001}"
if [ -z "${AA_CREDENTIAL_TOKEN:-}" ] && [ -n "${AA_CREDENTIAL_TOKEN_FILE:-}" ]; then
  # The token written by `aa-runtime token --out` (e.g. a Kubernetes init container).
  AA_CREDENTIAL_TOKEN=$(cat "$AA_CREDENTIAL_TOKEN_FILE") || { echo "sidecar.sh: cannot read AA_CREDENTIAL_TOKEN_FILE=$AA_CREDENTIAL_TOKEN_FILE" >&2; exit 2; }
fi
: "${AA_CREDENTIAL_TOKEN:=}"
case $AA_CREDENTIAL_TOKEN in
  *[!A-Za-z0-9._-]*) echo "sidecar.sh: AA_CREDENTIAL_TOKEN has characters a credential token never has" >&2; exit 2 ;;
esac
out=${AA_ENVOY_CONFIG:-${TMPDIR:-/tmp}/aa-envoy-$$.yaml}
sed -e "s|\${AA_AGENT_ID}|$AA_AGENT_ID|g" \
    -e "s|\${AA_ORG}|$AA_ORG|g" -e "s|\${AA_TEAM}|$AA_TEAM|g" -e "s|\${AA_AGENT}|$AA_AGENT|g" \
    -e "s|\${AA_GATEWAY_HOST}|$AA_GATEWAY_HOST|g" -e "s|\${AA_GATEWAY_PORT}|$AA_GATEWAY_PORT|g" \
    -e "s|\${AA_ENVOY_ADMIN_PORT}|$AA_ENVOY_ADMIN_PORT|g" -e "s|\${AA_EGRESS_PORT}|$AA_EGRESS_PORT|g" \
    -e "s|\${AA_CREDENTIAL_TOKEN}|$AA_CREDENTIAL_TOKEN|g" \
    "$template" > "$out"
exec "${ENVOY_BIN:-envoy}" -c "$out" "$@"
