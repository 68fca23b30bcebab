package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/action"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/storage"
)

// placeholderRE finds ${NAME} placeholders in tool arguments.
var placeholderRE = regexp.MustCompile(`\$\{([^}]*)\}`)

// DispatchTool implements SecretsService.DispatchTool: it decides a tool
// call whose arguments carry ${NAME} placeholders and, when the call is
// allowed, returns its arguments with every placeholder replaced by the
// secret, for the trusted runtime to execute. The agent never sees the
// secret and the audit log records the placeholder form only.
//
// In order, and changing nothing when a step refuses:
//   - the request must be a valid TOOL_CALL (INVALID_ARGUMENT naming the field);
//   - every placeholder must name a secret that the tools entry governing
//     the tool grants (`tools.<name>.secrets` in an enforce document),
//     else PERMISSION_DENIED naming it;
//   - every placeholder's secret must be set, else FAILED_PRECONDITION
//     naming it;
//   - the call is decided and audited like CheckAction; only an ALLOW or
//     REDACT answer carries resolved_args_json (for REDACT, resolved from
//     the redacted arguments).
//
// Refusals after validation are audited as governance events (rule
// secrets.dispatch) that name the secret, never its value.
func (s *SecretsService) DispatchTool(ctx context.Context, req *v1.DispatchToolRequest) (*v1.DispatchToolResponse, error) {
	c := s.core
	check := req.GetCheck()
	if check == nil {
		return nil, requestStatus(badField("check", "is required: the tool call to dispatch"))
	}
	if s.auth.Enabled() {
		id, err := s.auth.AuthenticateProto(ctx, "DispatchTool", check.GetCredentialToken(), check.GetAgent())
		if err != nil {
			return nil, err
		}
		if check.GetAgent() == nil {
			check.Agent = agentIDTo(id)
		}
	}
	if check.GetActionType() != v1.ActionType_TOOL_CALL {
		return nil, requestStatus(badField("check.action_type", "must be TOOL_CALL for DispatchTool (got %s)", check.GetActionType()))
	}
	a, err := toAction(check, c.limits, c.now())
	if err != nil {
		c.reject(ctx, check, err, c.now())
		return nil, requestStatus(err)
	}
	names, err := placeholders(a.Tool.ArgsJSON)
	if err != nil {
		c.reject(ctx, check, err, c.now())
		return nil, requestStatus(err)
	}
	granted := c.Settings(a.Agent).ToolSecrets(a.Tool.Name)
	for _, n := range names {
		if !slices.Contains(granted, n) {
			reason := fmt.Sprintf("tool %s may not use secret ${%s}: add it to tools[%s].secrets of the agent's policy", a.Tool.Name, n, a.Tool.Name)
			s.auditDispatch(ctx, a, reason, n)
			return nil, status.Error(codes.PermissionDenied, reason)
		}
	}
	values := make(map[string]string, len(names))
	for _, n := range names {
		v, err := s.secrets.GetSecret(ctx, n)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			reason := fmt.Sprintf("secret ${%s} is not set (aasm secret set %s)", n, n)
			s.auditDispatch(ctx, a, reason, n)
			return nil, status.Error(codes.FailedPrecondition, reason)
		case err != nil:
			return nil, storeStatus("read secret "+n, err)
		}
		values[n] = string(v)
	}

	resp, err := c.Check(ctx, check)
	if err != nil {
		return nil, requestStatus(err)
	}
	out := &v1.DispatchToolResponse{Result: resp}
	switch resp.GetDecision() {
	case v1.Decision_ALLOW, v1.Decision_REDACT:
	default:
		return out, nil
	}
	args := a.Tool.ArgsJSON
	if resp.GetDecision() == v1.Decision_REDACT && args != "" {
		res, err := c.ScanBody(a.Agent, []byte(args), true)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "redact tool arguments: %v: failing closed", err)
		}
		args = string(res.Redacted)
	}
	resolved, err := resolveArgs(args, values)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "resolve tool arguments: %v", err)
	}
	out.ResolvedArgsJson = resolved
	return out, nil
}

// auditDispatch records a refused dispatch.
func (s *SecretsService) auditDispatch(ctx context.Context, a action.Action, reason, secret string) {
	payload, _ := json.Marshal(struct {
		Tool   string `json:"tool"`
		Secret string `json:"secret"`
	}{a.Tool.Name, secret})
	if err := s.core.AuditGovernance(ctx, a.Agent, "secrets.dispatch", "dispatch refused: "+reason, payload); err != nil {
		s.core.log.ErrorContext(ctx, "audit refused dispatch", "tool", a.Tool.Name, "err", err)
	}
}

// placeholders returns the distinct secret names referenced as ${NAME} in
// the string values of args, in order of appearance.
func placeholders(args string) ([]string, error) {
	var names []string
	for _, m := range placeholderRE.FindAllStringSubmatch(args, -1) {
		if err := ValidSecretName(m[1]); err != nil {
			return nil, badField("check.tool_call.args_json", "placeholder %s: not a secret name (upper case letters, digits and _, starting with a letter)", clipName(m[0]))
		}
		if !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	if strings.Count(args, "${") != len(placeholderRE.FindAllString(args, -1)) {
		return nil, badField("check.tool_call.args_json", "unterminated placeholder: use ${NAME}")
	}
	return names, nil
}

// resolveArgs replaces the placeholders in the string values of the JSON
// document args (keys are left alone) and re-encodes it, so a secret with
// quotes or backslashes stays valid JSON. Object keys come out sorted.
func resolveArgs(args string, values map[string]string) (string, error) {
	if args == "" || len(values) == 0 {
		return args, nil
	}
	dec := json.NewDecoder(strings.NewReader(args))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return "", fmt.Errorf("decode arguments: %w", err)
	}
	doc = resolveValue(doc, values)
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return "", fmt.Errorf("encode arguments: %w", err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func resolveValue(v any, values map[string]string) any {
	switch t := v.(type) {
	case string:
		// One pass: a secret that itself contains ${...} is never expanded.
		return placeholderRE.ReplaceAllStringFunc(t, func(m string) string {
			if val, ok := values[m[2:len(m)-1]]; ok {
				return val
			}
			return m
		})
	case []any:
		for i := range t {
			t[i] = resolveValue(t[i], values)
		}
	case map[string]any:
		for k := range t {
			t[k] = resolveValue(t[k], values)
		}
	}
	return v
}
