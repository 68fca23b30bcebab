// Command aasm is the agent-assembly operator CLI. It talks to a gateway over
// gRPC; run "aasm --help" for the commands.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// Exit codes. check and explain use exitAllow/exitDeny/exitPending; every
// command uses exitError for failures.
const (
	exitAllow   = 0
	exitDeny    = 1
	exitPending = 2
	exitError   = 3
)

// exitCode carries a non-error exit status out of a command.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// globals are the flags every command shares.
type globals struct {
	addr    string
	timeout time.Duration
	output  string
	out     io.Writer
	errOut  io.Writer
	conn    connFlags // how to reach and authenticate (conn.go)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// execute runs aasm with args and returns the process exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return executeIn(ctx, args, os.Stdin, stdout, stderr)
}

// executeIn is execute reading stdin from in (secret values).
func executeIn(ctx context.Context, args []string, in io.Reader, stdout, stderr io.Writer) int {
	g := &globals{out: stdout, errOut: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitAllow
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec)
	}
	fmt.Fprintln(stderr, "aasm: "+describe(err, g.addr))
	return exitError
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "aasm",
		Short: "Operate an agent-assembly gateway",
		Long: `aasm is the command-line client of the agent-assembly gateway.

It checks actions against the live policy, explains decisions, and validates
policy documents. The gateway address comes from --addr, $AA_ADDR or the
address saved by aasm login; the operator API key from --api-key,
--api-key-file, $AA_API_KEY, $AA_API_KEY_FILE or aasm login (sent only to the
address it was saved for). Roles and keys: docs/security.md.`,
		Example:       "  aasm check --agent acme/eng/coder-1 --tool git_status\n  aasm policy validate examples/policies",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def, warn := defaultAddr()
	if warn != "" {
		fmt.Fprintln(g.errOut, "aasm: "+warn)
	}
	root.PersistentFlags().StringVar(&g.addr, "addr", def, "gateway gRPC address, host:port or unix:/path (env AA_ADDR, else saved by aasm login)")
	root.PersistentFlags().DurationVar(&g.timeout, "timeout", 10*time.Second, "deadline for each call to the gateway")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	addConnFlags(root, &g.conn)
	root.AddCommand(newCheckCmd(g), newPolicyCmd(g), newAuditCmd(g), newApprovalsCmd(g), withCosts(newBudgetCmd(g), g), newAlertsCmd(g), newSecretCmd(g), newTopologyCmd(g), newAgentCmd(g), newXDSCmd(g), newStatusCmd(g), newLogsCmd(g), newLoginCmd(g), newLogoutCmd(g), newAdminCmd(g), newVersionCmd(g))
	// cobra's completion commands take their writer when created.
	root.SetOut(g.out)
	root.SetErr(g.errOut)
	addCompletionExamples(root)
	return root
}

// addCompletionExamples creates cobra's completion command now, rather than
// at execution, so its help and each shell's carry an example like every
// other command.
func addCompletionExamples(root *cobra.Command) {
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() != "completion" {
			continue
		}
		c.Example = "  source <(aasm completion bash)\n  aasm completion zsh > \"${fpath[1]}/_aasm\""
		for _, sh := range c.Commands() {
			switch sh.Name() {
			case "bash":
				sh.Example = "  source <(aasm completion bash)\n  aasm completion bash > /etc/bash_completion.d/aasm"
			case "zsh":
				sh.Example = "  aasm completion zsh > \"${fpath[1]}/_aasm\""
			case "fish":
				sh.Example = "  aasm completion fish > ~/.config/fish/completions/aasm.fish"
			case "powershell":
				sh.Example = "  aasm completion powershell | Out-String | Invoke-Expression"
			}
		}
	}
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the aasm version",
		Example: "  aasm version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			if g.output == "json" || g.output == "yaml" {
				return g.printValue(map[string]any{"version": server.Version})
			}
			fmt.Fprintln(g.out, "aasm", server.Version)
			return nil
		},
	}
}

// dial connects to the gateway (see dialGateway in conn.go).
func (g *globals) dial() (*grpc.ClientConn, error) { return g.dialGateway() }

func trimSlashes(s string) string {
	if len(s) > 2 && s[:2] == "//" {
		return s[2:]
	}
	return s
}

// describe turns an error into a message that says what to do next.
func describe(err error, addr string) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	switch st.Code().String() {
	case "Unavailable":
		return fmt.Sprintf("cannot reach the gateway at %s: %s\n  is aa-gateway running? start it with `make run`, or point --addr / AA_ADDR at it", addr, st.Message())
	case "DeadlineExceeded":
		return fmt.Sprintf("the gateway at %s did not answer in time (raise --timeout): %s", addr, st.Message())
	case "InvalidArgument":
		return "the gateway rejected the request: " + st.Message()
	case "Unimplemented":
		return fmt.Sprintf("the gateway at %s does not support this call yet: %s", addr, st.Message())
	case "Unauthenticated":
		if !strings.Contains(st.Message(), "API key") {
			return fmt.Sprintf("the gateway at %s did not accept the credentials: %s", addr, st.Message())
		}
		return fmt.Sprintf("the gateway at %s did not accept the credentials: %s\n  log in with a key: aasm login --addr %s --key-file FILE (or set $AA_API_KEY)", addr, st.Message(), addr)
	case "PermissionDenied":
		return fmt.Sprintf("the gateway at %s refused: %s\n  ask an admin for a key with that role (aasm admin key create --role ROLE)", addr, st.Message())
	}
	return fmt.Sprintf("%s: %s", st.Code(), st.Message())
}
