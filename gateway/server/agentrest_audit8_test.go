package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestAgentTokenOverREST is the agent-token column of the REST matrix seen
// from the positive side: with agent authentication on, POST
// /v1/actions:check is decided for the agent whose credential token is in
// the body, refused with the generic 401 without a valid one (an admin key
// does not stand in for it), and with 403 for another agent's valid token.
func TestAgentTokenOverREST(t *testing.T) {
	g := startGateway(t, examplesDir(t), tokenMode)
	token := register(t, g, coder, nil).token
	other := register(t, g, agent("acme", "research", "researcher-1"), nil).token
	post := func(body, bearer string) (int, map[string]any) {
		t.Helper()
		return postJSONAs(t, g.base+"/v1/actions:check", body, bearer)
	}
	check := func(tok string) string {
		b, _ := json.Marshal(map[string]any{
			"agent":            map[string]string{"org_id": "acme", "team_id": "eng", "agent_id": "coder-1"},
			"tool_call":        map[string]string{"name": "git_status", "args_json": "{}"},
			"credential_token": tok,
		})
		return string(b)
	}
	if code, m := post(check(token), ""); code != http.StatusOK || m["decision"] != "ALLOW" {
		t.Fatalf("check with the agent's own token: %d %v", code, m)
	}
	for name, c := range map[string]struct {
		body, bearer string
		want         int
	}{
		"no token":              {check(""), "", http.StatusUnauthorized},
		"admin key, no token":   {check(""), testAdminKey, http.StatusUnauthorized},
		"garbled token":         {check("aat_garbled"), "", http.StatusUnauthorized},
		"another agent's token": {check(other), "", http.StatusForbidden},
	} {
		code, m := post(c.body, c.bearer)
		if code != c.want || m["decision"] != nil {
			t.Errorf("%s: %d %v, want %d and no decision", name, code, m, c.want)
		}
		msg, _ := m["message"].(string)
		for _, cause := range []string{"revoked", "expired", "signature", "malformed"} {
			if strings.Contains(msg, cause) {
				t.Errorf("%s: the refusal tells the caller why (%s): %q", name, cause, msg)
			}
		}
	}
}
