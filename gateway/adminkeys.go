package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
	"github.com/agent-assembly/agent-assembly/storage"
)

// governanceAuditor writes governance records (Core implements it).
type governanceAuditor interface {
	AuditGovernance(ctx context.Context, agent action.AgentID, ruleID, reason string, payload []byte) error
}

// maxKeyNameLen bounds an API key's name.
const maxKeyNameLen = 64

// WithKeys enables the API-key calls on keys; every change is audited
// through audit as a governance event.
func (a *AdminService) WithKeys(keys storage.APIKeys, audit governanceAuditor) *AdminService {
	a.keys, a.audit = keys, audit
	return a
}

func (a *AdminService) keyStore() (storage.APIKeys, error) {
	if a.keys == nil {
		return nil, status.Error(codes.Unimplemented, "API keys are not enabled on this gateway")
	}
	return a.keys, nil
}

// CreateApiKey implements AdminService.CreateApiKey: a new key with a
// random id and secret; the secret is in the answer and nowhere else.
func (a *AdminService) CreateApiKey(ctx context.Context, req *v1.CreateApiKeyRequest) (*v1.ApiKeySecret, error) {
	keys, err := a.keyStore()
	if err != nil {
		return nil, err
	}
	if err := checkKeyName(req.GetName()); err != nil {
		return nil, requestStatus(err)
	}
	role, err := auth.ParseRole(req.GetRole())
	if err != nil {
		return nil, requestStatus(badField("role", "%v", err))
	}
	k, err := auth.NewKey()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	by := actor(ctx)
	stored := &storage.APIKey{ID: k.ID, Name: req.GetName(), Role: role.String(), Hash: k.Hash(), CreatedAt: time.Now(), CreatedBy: by}
	if err := keys.CreateAPIKey(ctx, stored); err != nil {
		return nil, storeStatus("create api key", err)
	}
	a.auditKey(ctx, "apikey.create", stored, by)
	return &v1.ApiKeySecret{Key: APIKeyToProto(stored), Secret: k.String()}, nil
}

// RotateApiKey implements AdminService.RotateApiKey: same id and role, a
// new secret; the old secret stops working at once.
func (a *AdminService) RotateApiKey(ctx context.Context, req *v1.RotateApiKeyRequest) (*v1.ApiKeySecret, error) {
	keys, err := a.keyStore()
	if err != nil {
		return nil, err
	}
	if err := checkKeyID(req.GetId()); err != nil {
		return nil, requestStatus(err)
	}
	secret, err := auth.NewSecret()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	k := auth.Key{ID: req.GetId(), Secret: secret}
	stored, err := keys.RotateAPIKey(ctx, k.ID, k.Hash(), time.Now())
	if errors.Is(err, storage.ErrConflict) {
		return nil, status.Errorf(codes.FailedPrecondition, "api key %s is revoked; create a new one", k.ID)
	}
	if err != nil {
		return nil, storeStatus("rotate api key", err)
	}
	a.auditKey(ctx, "apikey.rotate", stored, actor(ctx))
	return &v1.ApiKeySecret{Key: APIKeyToProto(stored), Secret: k.String()}, nil
}

// RevokeApiKey implements AdminService.RevokeApiKey. The next call with the
// key fails on every replica sharing the store.
func (a *AdminService) RevokeApiKey(ctx context.Context, req *v1.RevokeApiKeyRequest) (*v1.ApiKey, error) {
	keys, err := a.keyStore()
	if err != nil {
		return nil, err
	}
	if err := checkKeyID(req.GetId()); err != nil {
		return nil, requestStatus(err)
	}
	stored, err := keys.RevokeAPIKey(ctx, req.GetId(), time.Now())
	if err != nil {
		return nil, storeStatus("revoke api key", err)
	}
	a.auditKey(ctx, "apikey.revoke", stored, actor(ctx))
	return APIKeyToProto(stored), nil
}

// ListApiKeys implements AdminService.ListApiKeys; no secret or hash leaves.
func (a *AdminService) ListApiKeys(ctx context.Context, _ *v1.ListApiKeysRequest) (*v1.ListApiKeysResponse, error) {
	keys, err := a.keyStore()
	if err != nil {
		return nil, err
	}
	list, err := keys.ListAPIKeys(ctx)
	if err != nil {
		return nil, storeStatus("list api keys", err)
	}
	out := &v1.ListApiKeysResponse{}
	for _, k := range list {
		out.Keys = append(out.Keys, APIKeyToProto(k))
	}
	return out, nil
}

// APIKeyToProto converts a stored key to its wire form, without its hash.
func APIKeyToProto(k *storage.APIKey) *v1.ApiKey {
	out := &v1.ApiKey{Id: k.ID, Name: k.Name, Role: k.Role, Revoked: k.Revoked()}
	if !k.CreatedAt.IsZero() {
		out.CreatedAt = timestamppb.New(k.CreatedAt)
	}
	if !k.LastUsedAt.IsZero() {
		out.LastUsedAt = timestamppb.New(k.LastUsedAt)
	}
	return out
}

func (a *AdminService) auditKey(ctx context.Context, rule string, k *storage.APIKey, by string) {
	if a.audit == nil {
		return
	}
	payload, _ := json.Marshal(map[string]string{"id": k.ID, "name": k.Name, "role": k.Role, "by": by})
	verb := map[string]string{"apikey.create": "created", "apikey.rotate": "rotated", "apikey.revoke": "revoked"}[rule]
	_ = a.audit.AuditGovernance(context.WithoutCancel(ctx), action.AgentID{}, rule,
		fmt.Sprintf("api key %s (%s, %s) %s by %s", k.ID, k.Name, k.Role, verb, by), payload)
}

// actor names the operator making the call for the audit log.
func actor(ctx context.Context) string { return authorOf(ctx, "") }

func checkKeyName(name string) error {
	if name == "" {
		return badField("name", "is required: what the key is for (ci, alice)")
	}
	if len(name) > maxKeyNameLen {
		return badField("name", "is %d bytes, over the limit of %d", len(name), maxKeyNameLen)
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '@') {
			return badField("name", "has %q at byte %d: use letters, digits and - _ . @", c, i)
		}
	}
	return nil
}

func checkKeyID(id string) error {
	if id == "" {
		return badField("id", "is required: the key id (aasm admin key list)")
	}
	if len(id) != 16 {
		return badField("id", "must be the 16-character key id shown by aasm admin key list")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return badField("id", "must be the 16-character key id shown by aasm admin key list")
		}
	}
	return nil
}

// withActor adds "by": the authenticated operator (auth.Principal) to a
// governance payload that is a JSON object without one, so every operator
// change in the audit log names the key that made it.
func withActor(ctx context.Context, payload []byte) []byte {
	p := auth.Principal(ctx)
	if p == "" {
		return payload
	}
	var m map[string]any
	if json.Unmarshal(payload, &m) != nil || m == nil {
		return payload
	}
	if _, ok := m["by"]; ok {
		return payload
	}
	m["by"] = p
	out, err := json.Marshal(m)
	if err != nil {
		return payload
	}
	return out
}
