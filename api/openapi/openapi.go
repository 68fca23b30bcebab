// Package openapi embeds the OpenAPI (Swagger 2.0) description of the REST API
// generated from the protobuf schema by protoc-gen-openapiv2.
package openapi

import _ "embed"

// JSON is the merged OpenAPI document for every agentassembly.v1 service.
//
//go:embed agentassembly.swagger.json
var JSON []byte
