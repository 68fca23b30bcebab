package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
)

func newSecretCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "secret",
		Aliases: []string{"secrets"},
		Short:   "Store, list and delete the secrets the gateway injects for agents",
		Long: `secret manages named secrets. The gateway keeps them encrypted and adds them
to agents' requests where the policy asks for it (network.allowlist entries with
inject: {header, value: "Bearer ${NAME}"}), so agents never hold the keys.
Values are read from stdin or a file, never from a flag, so they stay out of
shell history; they are never printed and appear in the audit log only by name.`,
		Example: `  printf %s "$OPENAI_API_KEY" | aasm secret set OPENAI_API_KEY
  aasm secret set GITHUB_TOKEN --from-file ~/.config/gh/token
  aasm secret list
  aasm secret delete GITHUB_TOKEN`,
	}
	cmd.AddCommand(newSecretSetCmd(g), newSecretListCmd(g), newSecretDeleteCmd(g))
	return cmd
}

func secretRows(t *table, list []*v1.SecretInfo) {
	t.row("NAME", "VERSION", "UPDATED")
	for _, s := range list {
		updated := ""
		if s.GetUpdatedAt() != nil {
			updated = s.GetUpdatedAt().AsTime().UTC().Format(time.RFC3339)
		}
		t.row(s.GetName(), fmt.Sprint(s.GetVersion()), updated)
	}
}

func newSecretSetCmd(g *globals) *cobra.Command {
	var fromFile string
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Store a secret, reading its value from stdin or --from-file",
		Long: `set stores NAME, replacing any earlier value. NAME is upper case letters,
digits and _, starting with a letter (` + gateway.SecretNamePattern + `).
The value is read from stdin (one trailing newline is dropped) or, with
--from-file, taken from the file byte for byte. It is at most 64 KiB.`,
		Example: `  printf %s "$OPENAI_API_KEY" | aasm secret set OPENAI_API_KEY
  aasm secret set ANTHROPIC_API_KEY < anthropic.key
  aasm secret set GITHUB_TOKEN --from-file ~/.config/gh/token`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := gateway.ValidSecretName(name); err != nil {
				return fmt.Errorf("secret %s", err)
			}
			value, err := readSecret(cmd, fromFile)
			if err != nil {
				return err
			}
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.secrets.PutSecret(ctx, &v1.PutSecretRequest{Name: name, Value: value})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { secretRows(t, []*v1.SecretInfo{resp}) })
			})
		},
	}
	cmd.Flags().StringVar(&fromFile, "from-file", "", "read the value from this file instead of stdin")
	return cmd
}

// readSecret reads a secret value from path or, when path is empty, stdin.
func readSecret(cmd *cobra.Command, path string) ([]byte, error) {
	var r io.Reader
	what := "stdin"
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read secret value: %w", err)
		}
		defer f.Close()
		r, what = f, path
	} else {
		in := cmd.InOrStdin()
		if f, ok := in.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "Enter the secret value, then press Ctrl-D:")
			}
		}
		r = in
	}
	value, err := io.ReadAll(io.LimitReader(r, gateway.MaxSecretBytes+2))
	if err != nil {
		return nil, fmt.Errorf("read secret value from %s: %w", what, err)
	}
	if path == "" {
		value = bytes.TrimSuffix(value, []byte("\n"))
		value = bytes.TrimSuffix(value, []byte("\r"))
	}
	switch {
	case len(value) == 0:
		return nil, fmt.Errorf("secret value from %s is empty: pipe the value in or use --from-file", what)
	case len(value) > gateway.MaxSecretBytes:
		return nil, fmt.Errorf("secret value from %s is over the limit of %d bytes", what, gateway.MaxSecretBytes)
	}
	return value, nil
}

func newSecretListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "List secret names and versions (never values)",
		Example: "  aasm secret list\n  aasm secret list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				resp, err := c.secrets.ListSecrets(ctx, &v1.ListSecretsRequest{})
				if err != nil {
					return err
				}
				return g.print(resp, func(t *table) { secretRows(t, resp.GetSecrets()) })
			})
		},
	}
}

func newSecretDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a secret",
		Long:    "delete removes NAME. Requests whose policy injects it are then denied until it is set again.",
		Example: "  aasm secret delete GITHUB_TOKEN",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				if _, err := c.secrets.DeleteSecret(ctx, &v1.DeleteSecretRequest{Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(g.out, "secret %s deleted\n", args[0])
				return nil
			})
		},
	}
}
