// Package auth authenticates and authorizes operators: API keys with roles,
// the table that gives every gRPC method a class, and the gRPC interceptors
// and REST middleware that enforce it.
package auth
