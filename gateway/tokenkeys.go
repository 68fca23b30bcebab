package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/identity"
)

// TokenKeys names the token-signing keys after a rotation (identity.KeyID).
type TokenKeys struct {
	// Current signs new tokens.
	Current string
	// Previous still verifies the tokens it signed; empty when revoked.
	Previous string
	// Revoked keys verify nothing any more.
	Revoked []string
}

// TokenKeyRotator replaces the token-signing key; the server implements it
// over identity.RotateSigningKey.
type TokenKeyRotator interface {
	RotateTokenKey(ctx context.Context, revokePrevious bool) (TokenKeys, error)
}

// WithTokenKeys enables RotateTokenKey through r; every rotation is audited
// as a governance event (rule token-key.rotate).
func (a *AdminService) WithTokenKeys(r TokenKeyRotator) *AdminService {
	a.tokenKeys = r
	return a
}

// RotateTokenKey implements AdminService.RotateTokenKey.
func (a *AdminService) RotateTokenKey(ctx context.Context, req *v1.RotateTokenKeyRequest) (*v1.TokenKeyRotation, error) {
	if a.tokenKeys == nil {
		return nil, status.Error(codes.Unimplemented, "token-signing key rotation is not enabled on this gateway")
	}
	k, err := a.tokenKeys.RotateTokenKey(ctx, req.GetRevokePrevious())
	switch {
	case errors.Is(err, identity.ErrRotationInProgress):
		return nil, status.Error(codes.Aborted, err.Error())
	case err != nil:
		return nil, storeStatus("rotate token-signing key", err)
	}
	by := actor(ctx)
	reason := fmt.Sprintf("token-signing key rotated to %s by %s", k.Current, by)
	if k.Previous != "" {
		reason += fmt.Sprintf("; %s verifies the tokens it signed until they expire", k.Previous)
	}
	if len(k.Revoked) > 0 {
		reason += fmt.Sprintf("; revoked %s: the tokens they signed no longer verify", strings.Join(k.Revoked, ", "))
	}
	if a.audit != nil {
		payload, _ := json.Marshal(map[string]any{"key_id": k.Current, "previous_key_id": k.Previous, "revoked_key_ids": k.Revoked, "by": by})
		_ = a.audit.AuditGovernance(context.WithoutCancel(ctx), action.AgentID{}, "token-key.rotate", reason, payload)
	}
	return &v1.TokenKeyRotation{KeyId: k.Current, PreviousKeyId: k.Previous, RevokedKeyIds: k.Revoked}, nil
}
