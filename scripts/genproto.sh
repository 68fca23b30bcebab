#!/usr/bin/env bash
# Regenerates the protobuf, gRPC, grpc-gateway and OpenAPI code under api/.
# Tools are pinned: protoc comes from Debian's protobuf-compiler (3.21), the
# plugins from go.mod's tool directives. Output is committed; CI checks that
# running this again changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

GOOGLEAPIS=/usr/share/gocode/src/github.com/gogo/googleapis
if ! command -v protoc >/dev/null || [ ! -f "$GOOGLEAPIS/google/api/annotations.proto" ]; then
  echo "installing protoc and google/api protos from Debian's packages" >&2
  apt-get install -y -qq protobuf-compiler golang-github-gogo-googleapis-dev >/dev/null
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
for t in google.golang.org/protobuf/cmd/protoc-gen-go \
         google.golang.org/grpc/cmd/protoc-gen-go-grpc \
         github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway \
         github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2; do
  go build -o "$bin/" "$t"
done

# Debian ships google/api/*.proto with go_package "api"; map them to genproto.
M="Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations"

out=api/agentassembly/v1
rm -f "$out"/*.pb.go "$out"/*.pb.gw.go api/openapi/agentassembly.swagger.json
protos=$(ls api/agentassembly/v1/*.proto)
PATH="$bin:$PATH" protoc -I api -I "$GOOGLEAPIS" -I /usr/include \
  --go_out=paths=source_relative,$M:api \
  --go-grpc_out=paths=source_relative,$M:api \
  --grpc-gateway_out=paths=source_relative,generate_unbound_methods=false,$M:api \
  --openapiv2_out=allow_merge=true,merge_file_name=agentassembly,json_names_for_fields=false,$M:api/openapi \
  $protos
gofmt -w "$out"
echo "generated: $(ls "$out"/*.go | wc -l) Go files, api/openapi/agentassembly.swagger.json" >&2
