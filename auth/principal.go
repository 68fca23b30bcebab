package auth

import "context"

// Identity is who an authenticated operator call comes from.
type Identity struct {
	// Name is the key's name, or the client certificate's name; it is the
	// actor the audit log records.
	Name string
	// Role is the caller's role.
	Role Role
	// KeyID is the API key's id (empty for a certificate).
	KeyID string
	// Via is how the caller proved it: "api-key", "client-cert" or
	// "auth-off" (authentication disabled for loopback development).
	Via string
}

type identityKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFrom returns the caller's identity when the call was authenticated
// as an operator.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Principal returns the name of the operator making the call, for the audit
// log's "who": the API key's (or client certificate's) name, or "" when the
// call was not authenticated as an operator (agent calls, auth off).
func Principal(ctx context.Context) string {
	id, ok := IdentityFrom(ctx)
	if !ok || id.Via == ViaAuthOff {
		return ""
	}
	return id.Name
}

// How an identity was proved.
const (
	ViaAPIKey     = "api-key"
	ViaClientCert = "client-cert"
	ViaAuthOff    = "auth-off"
)
