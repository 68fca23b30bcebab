package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
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
