// Command agent is a small agent governed through sdkclient. Run it under
// the runtime, which tells it where its socket is:
//
//	aa-runtime exec --agent acme/eng/coder-1 -- go run ./examples/agent
//
// or against a gateway directly:
//
//	AA_GATEWAY_ADDR=127.0.0.1:50051 AA_AGENT_ID=acme/eng/coder-1 go run ./examples/agent
//
// It wraps a tool, calls it, tries a tool and a command policy should deny,
// and prints one line per step.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/agent-assembly/agent-assembly/sdkclient"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

// EchoArgs are the arguments of the echo tool.
type EchoArgs struct {
	Say string `json:"say"`
}

func run(ctx context.Context) error {
	c, err := sdkclient.Dial(ctx, sdkclient.Options{})
	if err != nil {
		return err
	}
	defer c.Close()
	a := c.Agent()
	fmt.Printf("agent %s/%s/%s connected\n", a.GetOrgId(), a.GetTeamId(), a.GetAgentId())

	tool := os.Getenv("AGENT_TOOL")
	if tool == "" {
		tool = "echo"
	}
	echo := sdkclient.WrapTool(c, tool, func(_ context.Context, in EchoArgs) (string, error) {
		return strings.ToUpper(in.Say), nil
	})
	out, err := echo(ctx, EchoArgs{Say: "hello"})
	fmt.Printf("tool %s: %q %s\n", tool, out, outcome(err))

	_, err = c.CheckToolCall(ctx, "rm_rf", map[string]string{"path": "/"})
	fmt.Printf("tool rm_rf: %s\n", outcome(err))

	_, err = c.CheckExec(ctx, "curl", "https://example.com")
	fmt.Printf("exec curl: %s\n", outcome(err))

	if h, err := c.Health(ctx); err == nil {
		fmt.Printf("runtime: gateway_reachable=%v buffered_events=%d\n", h.GetGatewayReachable(), h.GetBufferedEvents())
	}
	return nil
}

// outcome names a check's result.
func outcome(err error) string {
	var e *sdkclient.Error
	switch {
	case err == nil:
		return "allowed"
	case errors.Is(err, sdkclient.ErrDenied):
		return "denied (" + err.Error() + ")"
	case errors.Is(err, sdkclient.ErrPending) && errors.As(err, &e):
		return "pending approval " + e.ApprovalID()
	case errors.Is(err, sdkclient.ErrUnavailable):
		return "unavailable (" + err.Error() + ")"
	}
	return "error (" + err.Error() + ")"
}
