package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
)

func newAdminCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Administer the gateway: operator API keys and the agent token-signing key",
		Long: `admin manages what only admins may change: operator API keys (aasm admin key
create|rotate|revoke|list, and generate for a bootstrap key) and the key that signs
agent credential tokens (aasm admin token-key rotate).`,
		Example: `  aasm admin key create --name ci --role viewer
  aasm admin key list
  aasm admin token-key rotate`,
	}
	cmd.AddCommand(newAdminKeyCmd(g), newAdminTokenKeyCmd(g))
	return cmd
}

func newAdminTokenKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "token-key",
		Short:   "Rotate the key that signs agent credential tokens",
		Example: "  aasm admin token-key rotate",
	}
	var revoke bool
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Sign new agent tokens with a new key",
		Long: `rotate makes a new key sign agent credential tokens (from Register). The key it
replaces keeps verifying the tokens it signed until they expire (24 h), so agents carry
on; the key before that, if any, is dropped. Every replica follows within 10 seconds,
and at once when it meets a token signed with the new key.

--revoke-previous is the answer to a leaked key: the replaced key (and any older one) is
dropped at once, every token signed before the rotation stops verifying on every replica
within 10 seconds, and agents must register again (aa-runtime does so at the next
heartbeat, within 30 seconds; SDK callers on an Unauthenticated answer). Needs an admin
key; audited as token-key.rotate.`,
		Example: "  aasm admin token-key rotate\n  aasm admin token-key rotate --revoke-previous",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				r, err := c.admin.RotateTokenKey(ctx, &v1.RotateTokenKeyRequest{RevokePrevious: revoke})
				if err != nil {
					return err
				}
				return g.print(r, func(t *table) {
					prev := r.GetPreviousKeyId()
					if prev == "" {
						prev = "-"
					}
					t.row("KEY", "PREVIOUS (verifies until its tokens expire)", "REVOKED")
					t.row(r.GetKeyId(), prev, strings.Join(r.GetRevokedKeyIds(), ","))
				})
			})
		},
	}
	rotate.Flags().BoolVar(&revoke, "revoke-previous", false, "drop the replaced key at once: tokens signed before the rotation stop working")
	cmd.AddCommand(rotate)
	return cmd
}

func newAdminKeyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "key",
		Aliases: []string{"keys"},
		Short:   "Create, rotate, revoke and list operator API keys",
		Long: `key manages operator API keys. A key is aak_<id>_<secret>: the id is public
(it names the key in list, rotate and revoke), the secret is shown once, when
the key is created or rotated, and the gateway keeps only its SHA-256.

Roles: viewer reads (status, audit, policies, agents, approvals, alerts,
costs); operator also decides approvals, suspends, resumes and kills agents,
switches their enforcement mode and silences alerts; admin also applies and
rolls back policies, manages secrets and keys. Every change is audited with
the name of the key that made it.`,
		Example: `  aasm admin key create --name ci --role viewer
  aasm admin key list
  aasm admin key rotate 3f2a9c0d1e4b5a67
  aasm admin key revoke 3f2a9c0d1e4b5a67`,
	}
	cmd.AddCommand(newKeyCreateCmd(g), newKeyRotateCmd(g), newKeyRevokeCmd(g), newKeyListCmd(g), newKeyGenerateCmd(g))
	return cmd
}

func keyRows(t *table, keys []*v1.ApiKey) {
	t.row("ID", "NAME", "ROLE", "CREATED", "LAST USED", "STATUS")
	for _, k := range keys {
		st := "active"
		if k.GetRevoked() {
			st = "revoked"
		}
		t.row(k.GetId(), k.GetName(), k.GetRole(), stamp(k.GetCreatedAt()), stamp(k.GetLastUsedAt()), st)
	}
}

// printSecret shows a key with its secret, once.
func (g *globals) printSecret(s *v1.ApiKeySecret, verb string) error {
	return g.print(s, func(t *table) {
		keyRows(t, []*v1.ApiKey{s.GetKey()})
		t.row("")
		t.row(fmt.Sprintf("API key (%s; shown once, store it now):", verb))
		t.row(s.GetSecret())
	})
}

func newKeyCreateCmd(g *globals) *cobra.Command {
	var name, role string
	cmd := &cobra.Command{
		Use:   "create --name NAME --role ROLE",
		Short: "Create an API key; its secret is printed once",
		Long: `create makes a key named NAME (letters, digits, - _ . @; the actor the audit
log records for the key's calls) with role viewer, operator or admin, and
prints it once. Needs an admin key.`,
		Example: `  aasm admin key create --name ci --role viewer
  aasm admin key create --name alice --role operator -o json | jq -r .secret > alice.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := auth.ParseRole(role); err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				s, err := c.admin.CreateApiKey(ctx, &v1.CreateApiKeyRequest{Name: name, Role: role})
				if err != nil {
					return err
				}
				return g.printSecret(s, "created")
			})
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "what the key is for (required)")
	cmd.Flags().StringVar(&role, "role", "", "viewer, operator or admin (required)")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func newKeyRotateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate ID",
		Short: "Replace a key's secret; the new one is printed once",
		Long: `rotate keeps the key's id, name and role and replaces its secret: the old
secret stops working at once on every replica. Needs an admin key.`,
		Example: "  aasm admin key rotate 3f2a9c0d1e4b5a67",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				s, err := c.admin.RotateApiKey(ctx, &v1.RotateApiKeyRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.printSecret(s, "rotated")
			})
		},
	}
}

func newKeyRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a key: it stops working at once on every replica",
		Long: `revoke disables the key for good (rotate cannot revive it). Revoking the
bootstrap admin key after creating named admin keys is the expected first step
on a new gateway. Needs an admin key.`,
		Example: "  aasm admin key revoke 3f2a9c0d1e4b5a67",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				k, err := c.admin.RevokeApiKey(ctx, &v1.RevokeApiKeyRequest{Id: args[0]})
				if err != nil {
					return err
				}
				return g.print(k, func(t *table) { keyRows(t, []*v1.ApiKey{k}) })
			})
		},
	}
}

func newKeyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API keys (never their secrets)",
		Long:    "list shows every key with its id, name, role, creation, last use and whether it is revoked. Needs an admin key.",
		Example: "  aasm admin key list\n  aasm admin key list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.admin.ListApiKeys(ctx, &v1.ListApiKeysRequest{})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { keyRows(t, resp.GetKeys()) })
			})
		},
	}
}

func newKeyGenerateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "generate",
		Short: "Print a new random key without contacting a gateway (for a bootstrap key)",
		Long: `generate prints a fresh key for --bootstrap-admin-key-file or
$AA_BOOTSTRAP_ADMIN_KEY (a Kubernetes Secret, a systemd credential): a gateway
that starts with no admin key stores it as its admin key. It is not stored
anywhere by this command.`,
		Example: `  aasm admin key generate > admin.key && chmod 600 admin.key
  kubectl -n agent-assembly create secret generic aa-admin-key --from-literal=admin.key="$(aasm admin key generate)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := auth.NewKey()
			if err != nil {
				return err
			}
			if g.output == "json" || g.output == "yaml" {
				return g.print(&v1.ApiKeySecret{Key: &v1.ApiKey{Id: k.ID}, Secret: k.String()}, nil)
			}
			fmt.Fprintln(g.out, k.String())
			return nil
		},
	}
}
