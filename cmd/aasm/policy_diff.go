package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
)

// maxDiffLines bounds the line diff (quadratic in the document length).
const maxDiffLines = 20000

func newPolicyDiffCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "diff FROM [TO]",
		Short: "Show what changes between two versions, or a version and local files",
		Long: `diff compares two policy sets document by document (matched by file name)
and prints a unified diff. FROM and TO are each a stored version, "active",
or a local file or directory. TO defaults to "active".

Exit status: 0 identical, 1 different, 3 error.`,
		Example: `  aasm policy diff 3f2a9c1b7d4e            # that version -> the active one
  aasm policy diff active ./candidate       # what applying ./candidate would change
  aasm policy diff 3f2a9c1b7d4e 91b0e2aa4c17`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			to := "active"
			if len(args) == 2 {
				to = args[1]
			}
			var from, dest side
			err := g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				var err error
				if from, err = resolveSide(ctx, c, args[0]); err != nil {
					return err
				}
				dest, err = resolveSide(ctx, c, to)
				return err
			})
			if err != nil {
				return err
			}
			changed, err := writeDiff(g, from, dest)
			if err != nil || !changed {
				return err
			}
			return exitCode(exitDeny)
		},
	}
}

// side is one policy set being compared.
type side struct {
	label string
	docs  map[string]string
}

func resolveSide(ctx context.Context, c clients, arg string) (side, error) {
	if _, err := os.Stat(arg); err == nil {
		docs, err := readDocuments([]string{arg})
		if err != nil {
			return side{}, err
		}
		s := side{label: arg, docs: map[string]string{}}
		for _, d := range docs {
			s.docs[d.GetName()] = d.GetYaml()
		}
		return s, nil
	}
	info, err := c.policy.GetPolicy(ctx, &v1.GetPolicyRequest{Version: arg})
	if err != nil {
		return side{}, err
	}
	s := side{label: info.GetVersion(), docs: map[string]string{}}
	for _, d := range info.GetDocuments() {
		s.docs[d.GetName()] = d.GetYaml()
	}
	return s, nil
}

// docDiff is the change to one document between two policy sets.
type docDiff struct {
	name, change string // change: added, removed or modified
	from, to     string // the unified diff's file labels
	lines        []string
}

// diffSides compares a and b document by document, in name order.
func diffSides(a, b side) []docDiff {
	names := map[string]bool{}
	for n := range a.docs {
		names[n] = true
	}
	for n := range b.docs {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var out []docDiff
	for _, n := range sorted {
		x, inA := a.docs[n]
		y, inB := b.docs[n]
		if inA && inB && x == y {
			continue
		}
		d := docDiff{name: n, change: "modified", from: a.label + "/" + n, to: b.label + "/" + n}
		if !inA {
			d.change, d.from = "added", "/dev/null"
		}
		if !inB {
			d.change, d.to = "removed", "/dev/null"
		}
		d.lines = unified(splitLines(x), splitLines(y), 3)
		out = append(out, d)
	}
	return out
}

// writeDiff prints the unified diff of every document (or, with -o json or
// yaml, one object per changed document) and reports whether anything
// differs.
func writeDiff(g *globals, a, b side) (bool, error) {
	diffs := diffSides(a, b)
	if g.output == "json" || g.output == "yaml" {
		docs := []any{}
		for _, d := range diffs {
			docs = append(docs, map[string]any{"name": d.name, "change": d.change, "diff": strings.Join(append([]string{"--- " + d.from, "+++ " + d.to}, d.lines...), "\n") + "\n"})
		}
		return len(diffs) > 0, g.printValue(map[string]any{"from": a.label, "to": b.label, "changed": len(diffs) > 0, "documents": docs})
	}
	if g.output != "table" && g.output != "" {
		return false, fmt.Errorf("unknown --output %q: use table, json or yaml", g.output)
	}
	for _, d := range diffs {
		fmt.Fprintf(g.out, "--- %s\n+++ %s\n", d.from, d.to)
		for _, l := range d.lines {
			fmt.Fprintln(g.out, l)
		}
	}
	if len(diffs) == 0 {
		fmt.Fprintf(g.out, "no differences between %s and %s\n", a.label, b.label)
	}
	return len(diffs) > 0, nil
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// unified returns hunks of a line diff of a and b with ctx lines of context.
func unified(a, b []string, ctx int) []string {
	if len(a)+len(b) > maxDiffLines {
		return []string{fmt.Sprintf("@@ documents too long to diff line by line (%d and %d lines) @@", len(a), len(b))}
	}
	ops := lineOps(a, b)
	var out []string
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		// A hunk: from ctx lines before this change to ctx lines after the
		// last change that is at most 2*ctx unchanged lines further.
		start := max(i-ctx, 0)
		end := i
		for j := i; j < len(ops); j++ {
			if ops[j].kind != ' ' {
				end = j
				continue
			}
			if j-end > 2*ctx {
				break
			}
		}
		stop := min(end+ctx+1, len(ops))
		aStart, bStart, aLen, bLen := ops[start].ai, ops[start].bi, 0, 0
		var body []string
		for _, op := range ops[start:stop] {
			switch op.kind {
			case ' ':
				aLen++
				bLen++
			case '-':
				aLen++
			case '+':
				bLen++
			}
			body = append(body, string(op.kind)+op.line)
		}
		out = append(out, fmt.Sprintf("@@ -%s +%s @@", hunkRange(aStart, aLen), hunkRange(bStart, bLen)))
		out = append(out, body...)
		i = stop
	}
	return out
}

type lineOp struct {
	kind   byte
	line   string
	ai, bi int // positions in a and b before this op
}

// lineOps is a longest-common-subsequence line diff.
func lineOps(a, b []string) []lineOp {
	n, m := len(a), len(b)
	lcs := make([][]int32, n+1)
	for i := range lcs {
		lcs[i] = make([]int32, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var ops []lineOp
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, lineOp{' ', a[i], i, j})
			i++
			j++
		case j < m && (i == n || lcs[i][j+1] >= lcs[i+1][j]):
			ops = append(ops, lineOp{'+', b[j], i, j})
			j++
		default:
			ops = append(ops, lineOp{'-', a[i], i, j})
			i++
		}
	}
	return ops
}

// hunkRange formats a hunk range as unified diff does: an empty range is
// named by the line before it.
func hunkRange(start, n int) string {
	if n == 0 {
		return fmt.Sprintf("%d,0", start)
	}
	return fmt.Sprintf("%d,%d", start+1, n)
}
