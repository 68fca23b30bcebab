package gateway

import (
	"context"
	"encoding/json"
	"regexp"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// MaxSecretBytes is the largest secret value PutSecret accepts.
const MaxSecretBytes = 64 << 10

// SecretNamePattern is what a secret name must match: the form a policy's
// ${NAME} placeholders reference.
const SecretNamePattern = `^[A-Z][A-Z0-9_]{0,63}$`

var secretName = regexp.MustCompile(SecretNamePattern)

// SecretsService implements agentassembly.v1.SecretsService over a secrets
// store. Values go in and never come out: List returns names and versions,
// and the audit log records names only.
type SecretsService struct {
	v1.UnimplementedSecretsServiceServer
	core    *Core
	secrets storage.Secrets
	// auth proves the agent of DispatchTool (see WithAgentAuth).
	auth *AgentAuth
}

var _ v1.SecretsServiceServer = (*SecretsService)(nil)

// NewSecretsService returns the SecretsService that keeps secrets in secrets
// and audits every change through core.
func NewSecretsService(core *Core, secrets storage.Secrets) *SecretsService {
	return &SecretsService{core: core, secrets: secrets}
}

// WithAgentAuth makes DispatchTool require the named agent's credential. It
// returns s.
func (s *SecretsService) WithAgentAuth(a *AgentAuth) *SecretsService {
	s.auth = a
	return s
}

// ValidSecretName reports whether name is a valid secret name, with an
// error that says what a valid one looks like.
func ValidSecretName(name string) error {
	if name == "" {
		return badField("name", "is required (upper case letters, digits and _, starting with a letter, e.g. OPENAI_API_KEY)")
	}
	if !secretName.MatchString(name) {
		return badField("name", "%q does not match %s (upper case letters, digits and _, starting with a letter, at most 64 characters, e.g. OPENAI_API_KEY)", clipName(name), SecretNamePattern)
	}
	return nil
}

// clipName bounds a rejected name echoed in an error.
func clipName(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// PutSecret implements SecretsService.PutSecret.
func (s *SecretsService) PutSecret(ctx context.Context, req *v1.PutSecretRequest) (*v1.SecretInfo, error) {
	name := req.GetName()
	if err := ValidSecretName(name); err != nil {
		return nil, requestStatus(err)
	}
	value := req.GetValue()
	if len(value) == 0 {
		return nil, requestStatus(badField("value", "is empty: a secret needs a value"))
	}
	if len(value) > MaxSecretBytes {
		return nil, requestStatus(badField("value", "is %d bytes, over the limit of %d", len(value), MaxSecretBytes))
	}
	if err := s.secrets.PutSecret(ctx, name, value); err != nil {
		return nil, storeStatus("put secret "+name, err)
	}
	info := &v1.SecretInfo{Name: name}
	if meta, err := s.find(ctx, name); err == nil {
		info = secretInfo(meta)
	}
	if err := s.audit(ctx, "secret.put", "secret "+name+" stored", name, info.GetVersion()); err != nil {
		return nil, storeStatus("put secret "+name, err)
	}
	return info, nil
}

// ListSecrets implements SecretsService.ListSecrets.
func (s *SecretsService) ListSecrets(ctx context.Context, _ *v1.ListSecretsRequest) (*v1.ListSecretsResponse, error) {
	list, err := s.secrets.ListSecrets(ctx)
	if err != nil {
		return nil, storeStatus("list secrets", err)
	}
	out := &v1.ListSecretsResponse{Secrets: make([]*v1.SecretInfo, len(list))}
	for i, m := range list {
		out.Secrets[i] = secretInfo(m)
	}
	return out, nil
}

// DeleteSecret implements SecretsService.DeleteSecret.
func (s *SecretsService) DeleteSecret(ctx context.Context, req *v1.DeleteSecretRequest) (*v1.DeleteSecretResponse, error) {
	name := req.GetName()
	if err := ValidSecretName(name); err != nil {
		return nil, requestStatus(err)
	}
	if err := s.secrets.DeleteSecret(ctx, name); err != nil {
		return nil, storeStatus("delete secret "+name, err)
	}
	if err := s.audit(ctx, "secret.delete", "secret "+name+" deleted", name, 0); err != nil {
		return nil, storeStatus("delete secret "+name, err)
	}
	return &v1.DeleteSecretResponse{}, nil
}

// find returns the metadata of one secret.
func (s *SecretsService) find(ctx context.Context, name string) (storage.SecretMeta, error) {
	list, err := s.secrets.ListSecrets(ctx)
	if err != nil {
		return storage.SecretMeta{}, err
	}
	for _, m := range list {
		if m.Name == name {
			return m, nil
		}
	}
	return storage.SecretMeta{}, storage.ErrNotFound
}

// audit records a change by name and version; the value never reaches it.
func (s *SecretsService) audit(ctx context.Context, rule, reason, name string, version int64) error {
	payload, err := json.Marshal(struct {
		Secret  string `json:"secret"`
		Version int64  `json:"version,omitempty"`
	}{name, version})
	if err != nil {
		return err
	}
	return s.core.AuditGovernance(ctx, action.AgentID{}, rule, reason, payload)
}

func secretInfo(m storage.SecretMeta) *v1.SecretInfo {
	info := &v1.SecretInfo{Name: m.Name, Version: m.Version}
	if !m.UpdatedAt.IsZero() {
		info.UpdatedAt = timestamppb.New(m.UpdatedAt)
	}
	return info
}
