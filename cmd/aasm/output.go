package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// table collects rows for tabular output.
type table struct{ rows [][]string }

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

// print writes msg as JSON or YAML, or as the table that fill builds.
func (g *globals) print(msg proto.Message, fill func(*table)) error {
	switch g.output {
	case "json", "yaml":
		b, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: g.output == "json", Indent: "  "}.Marshal(msg)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		if g.output == "json" {
			fmt.Fprintln(g.out, string(b))
			return nil
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		y, err := yaml.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		_, err = g.out.Write(y)
		return err
	case "table", "":
		t := &table{}
		fill(t)
		return t.write(g)
	}
	return fmt.Errorf("unknown --output %q: use table, json or yaml", g.output)
}

func (t *table) write(g *globals) error {
	w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	for _, r := range t.rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}

// printValue writes v, a tree of maps, slices, strings, numbers and bools,
// as JSON or YAML with the same encoding print uses for messages. It is for
// commands whose output is not one API message (version, policy validate,
// policy diff); their table output is their own.
func (g *globals) printValue(v map[string]any) error {
	msg, err := structpb.NewStruct(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return g.print(msg, nil)
}

// printStreamed writes one message of a stream (audit tail, logs, approvals
// watch, alerts watch) in JSON or YAML: JSON objects follow each other, YAML
// documents are separated by "---" so the stream parses as a sequence of
// documents.
func (g *globals) printStreamed(msg proto.Message) error {
	if g.output == "yaml" {
		if _, err := fmt.Fprintln(g.out, "---"); err != nil {
			return err
		}
	}
	return g.print(msg, nil)
}

// checkOutput refuses an --output value no command understands.
func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("unknown --output %q: use table, json or yaml", g.output)
}
