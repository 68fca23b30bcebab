package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/agent-assembly/agent-assembly/action"
	"go.yaml.in/yaml/v3"
)

// maxErrors caps the errors reported for one file.
const maxErrors = 50

// Parse parses and validates one policy document. name is used in error
// messages and as Document.Source. On failure the error is an Errors value
// listing every problem found (up to 50) as "file:line:column: field: msg".
// Problems that do not reject the document are returned by
// Document.Warnings.
func Parse(name string, data []byte) (*Document, error) {
	p := &parser{file: name}
	doc := p.document(data)
	if len(p.errs) > 0 {
		p.errs.sort()
		return nil, p.errs
	}
	p.warns.sort()
	doc.warnings = p.warns
	return doc, nil
}

// LoadPath loads a policy file, or every .yaml and .yml file directly inside
// a directory in lexical order (subdirectories and other files are skipped;
// symbolic links to files are followed).
// Errors from all files are reported together.
func LoadPath(path string) ([]*Document, error) {
	files, err := Files(path)
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	srcs := make([]Source, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("load policies: %w", err)
		}
		srcs = append(srcs, Source{Name: f, Data: data})
	}
	return ParseAll(srcs)
}

// Files lists the policy documents at path, the files LoadPath reads: path
// itself when it is a file, else every regular .yaml and .yml file directly
// inside the directory (symbolic links to files followed, as Kubernetes
// ConfigMap volumes use), in lexical order. An empty directory gives an
// empty list.
func Files(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if ext != ".yaml" && ext != ".yml" {
			continue
		}
		full := filepath.Join(path, e.Name())
		regular := e.Type().IsRegular()
		if e.Type()&fs.ModeSymlink != 0 {
			if fi, err := os.Stat(full); err == nil {
				regular = fi.Mode().IsRegular()
			}
		}
		if regular {
			files = append(files, full)
		}
	}
	sort.Strings(files)
	return files, nil
}

// Source is one policy document's name (used in error positions) and text.
type Source struct {
	Name string
	Data []byte
}

// ParseAll parses every source and reports the problems of all of them
// together (as Errors) rather than stopping at the first bad document.
func ParseAll(srcs []Source) ([]*Document, error) {
	var docs []*Document
	var all Errors
	for _, src := range srcs {
		d, err := Parse(src.Name, src.Data)
		if err != nil {
			var errs Errors
			if errors.As(err, &errs) {
				all = append(all, errs...)
				continue
			}
			return nil, err
		}
		docs = append(docs, d)
	}
	if len(all) > 0 {
		return nil, all
	}
	return docs, nil
}

type parser struct {
	file  string
	errs  Errors
	warns Errors
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	if len(p.errs) >= maxErrors {
		return
	}
	e := &ValidationError{File: p.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	p.errs = append(p.errs, e)
}

func (p *parser) warnf(n *yaml.Node, field, format string, args ...any) {
	if len(p.warns) >= maxErrors {
		return
	}
	p.warns = append(p.warns, &ValidationError{File: p.file, Line: n.Line, Column: n.Column, Field: field, Msg: fmt.Sprintf(format, args...)})
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) syntaxError(err error) {
	msg := err.Error()
	e := &ValidationError{File: p.file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = "invalid YAML: " + m[2]
	}
	p.errs = append(p.errs, e)
}

func (p *parser) document(data []byte) (doc *Document) {
	defer func() {
		// yaml.v3 has panicked on hostile input before; never let that
		// take the gateway down.
		if r := recover(); r != nil {
			doc = nil
			p.errs = append(p.errs, &ValidationError{File: p.file, Msg: fmt.Sprintf("invalid YAML: %v", r)})
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			p.errs = append(p.errs, &ValidationError{File: p.file, Line: 1, Column: 1, Msg: "empty document: a policy needs apiVersion, kind, metadata and spec"})
		} else {
			p.syntaxError(err)
		}
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.errorf(&extra, "", "multiple documents in one file: put each policy in its own file")
		return nil
	} else if !errors.Is(err, io.EOF) {
		p.syntaxError(err)
		return nil
	}
	n := &root
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			p.errorf(n, "", "empty document: a policy needs apiVersion, kind, metadata and spec")
			return nil
		}
		n = n.Content[0]
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		p.errorf(n, "", "empty document: a policy needs apiVersion, kind, metadata and spec")
		return nil
	}
	if p.rejectAliases(n) {
		return nil
	}
	doc = &Document{Source: p.file, root: n}
	doc.Spec.EnforcementMode = action.ModeEnforce
	doc.Spec.Default = action.Deny
	var sawAPI, sawKind, sawMeta, sawSpec bool
	var specNode *yaml.Node
	p.fields(n, "", []string{"apiVersion", "kind", "metadata", "spec"}, func(key string, _, v *yaml.Node) {
		switch key {
		case "apiVersion":
			sawAPI = true
			if s, ok := p.str(v, key); ok && s != APIVersion {
				p.errorf(v, key, "unsupported apiVersion %q (want %q)", s, APIVersion)
			}
		case "kind":
			sawKind = true
			if s, ok := p.str(v, key); ok && s != DocumentKind {
				p.errorf(v, key, "unsupported kind %q (want %q)", s, DocumentKind)
			}
		case "metadata":
			sawMeta = true
			p.metadata(doc, v)
		case "spec":
			sawSpec = true
			specNode = v
		}
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for _, r := range []struct {
		saw  bool
		name string
	}{{sawAPI, "apiVersion"}, {sawKind, "kind"}, {sawMeta, "metadata"}, {sawSpec, "spec"}} {
		if !r.saw {
			p.errorf(n, r.name, "required field is missing")
		}
	}
	var c compiler
	if specNode != nil {
		p.spec(doc, specNode, &c)
	}
	if len(p.errs) > 0 {
		return nil
	}
	doc.plan = c.build(doc)
	return doc
}

func (p *parser) rejectAliases(n *yaml.Node) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		p.errorf(n, "", "YAML anchors and aliases are not supported in policies")
		return true
	}
	for _, c := range n.Content {
		if p.rejectAliases(c) {
			return true
		}
	}
	return false
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return "an integer"
	case "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	case "!!timestamp":
		return "a timestamp"
	}
	return "a value tagged " + n.ShortTag()
}

// fields walks a mapping, calling fn for every known key in document order.
// Unknown and duplicate keys are reported.
func (p *parser) fields(n *yaml.Node, path string, known []string, fn func(key string, k, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "expected a mapping, got %s", describe(n))
		return false
	}
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, path, "expected a field name, got %s", describe(k))
			continue
		}
		key := k.Value
		if !slices.Contains(known, key) {
			p.errorf(k, join(path, key), "unknown field (valid fields: %s)", strings.Join(known, ", "))
			continue
		}
		if seen[key] {
			p.errorf(k, join(path, key), "duplicate field")
			continue
		}
		seen[key] = true
		fn(key, k, v)
	}
	return true
}

func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.errorf(n, path, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) nonEmpty(n *yaml.Node, path string) (string, bool) {
	s, ok := p.str(n, path)
	if ok && strings.TrimSpace(s) == "" {
		p.errorf(n, path, "must not be empty")
		return "", false
	}
	return s, ok
}

func (p *parser) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		p.errorf(n, path, "expected true or false, got %s", describe(n))
		return false, false
	}
	b, err := strconv.ParseBool(strings.ToLower(n.Value))
	if err != nil {
		p.errorf(n, path, "expected true or false, got %q", n.Value)
		return false, false
	}
	return b, true
}

func (p *parser) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errorf(n, path, "expected an integer, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < lo || v > hi {
		p.errorf(n, path, "must be an integer between %d and %d, got %s", lo, hi, n.Value)
		return 0, false
	}
	return v, true
}

func (p *parser) money(n *yaml.Node, path string) (float64, bool) {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!float") {
		p.errorf(n, path, "expected a number, got %s", describe(n))
		return 0, false
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
	if err != nil || v < 0 || v > 1e12 || v != v {
		p.errorf(n, path, "must be a number between 0 and 1e12, got %s", n.Value)
		return 0, false
	}
	return v, true
}

func (p *parser) seq(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "expected a list, got %s", describe(n))
		return nil, false
	}
	return n.Content, true
}

// strings parses a list of strings; the result is non-nil (possibly empty)
// when the list itself is well-formed.
func (p *parser) strList(n *yaml.Node, path string) ([]string, []*yaml.Node) {
	items, ok := p.seq(n, path)
	if !ok {
		return nil, nil
	}
	out := make([]string, 0, len(items))
	nodes := make([]*yaml.Node, 0, len(items))
	for i, it := range items {
		if s, ok := p.nonEmpty(it, index(path, i)); ok {
			out = append(out, s)
			nodes = append(nodes, it)
		}
	}
	return out, nodes
}

func (p *parser) enum(n *yaml.Node, path string, valid ...string) (string, bool) {
	s, ok := p.str(n, path)
	if !ok {
		return "", false
	}
	if !slices.Contains(valid, s) {
		p.errorf(n, path, "invalid value %q (valid: %s)", s, strings.Join(valid, ", "))
		return "", false
	}
	return s, true
}

func (p *parser) glob(n *yaml.Node, path string) *glob {
	s, ok := p.str(n, path)
	if !ok {
		return nil
	}
	g, err := compileGlob(s)
	if err != nil {
		p.errorf(n, path, "%v", err)
		return nil
	}
	return g
}

func (p *parser) cel(n *yaml.Node, path string) (string, condition) {
	s, ok := p.str(n, path)
	if !ok {
		return "", nil
	}
	c, err := compileCondition(s)
	if err != nil {
		p.errorf(n, path, "%v", err)
		return s, nil
	}
	return s, c
}

// approvalCondition compiles requires_approval_if (see compileApproval). An
// unparseable condition is a warning, not an error: the entry then always
// requires approval.
func (p *parser) approvalCondition(n *yaml.Node, path string) (src string, c condition, unparseable string) {
	s, ok := p.str(n, path)
	if !ok {
		return "", nil, ""
	}
	c, unparseable, err := compileApproval(s)
	switch {
	case err != nil:
		p.errorf(n, path, "%v", err)
	case unparseable != "":
		p.warnf(n, path, "unparseable condition, approval will always be required: %s", unparseable)
	}
	return s, c, unparseable
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?$`)

func (p *parser) metadata(doc *Document, n *yaml.Node) {
	sawName := false
	p.fields(n, "metadata", []string{"name", "description", "labels"}, func(key string, _, v *yaml.Node) {
		path := join("metadata", key)
		switch key {
		case "name":
			sawName = true
			if s, ok := p.str(v, path); ok {
				if !nameRE.MatchString(s) {
					p.errorf(v, path, "invalid name %q: use lower-case letters, digits, '.', '_' and '-', starting and ending with a letter or digit", s)
				}
				doc.Metadata.Name = s
				doc.nameAt = position{v.Line, v.Column}
			}
		case "description":
			doc.Metadata.Description, _ = p.str(v, path)
		case "labels":
			if v.Kind != yaml.MappingNode {
				p.errorf(v, path, "expected a mapping, got %s", describe(v))
				return
			}
			doc.Metadata.Labels = make(map[string]string, len(v.Content)/2)
			for i := 0; i+1 < len(v.Content); i += 2 {
				kp := join(path, v.Content[i].Value)
				k, ok1 := p.nonEmpty(v.Content[i], path)
				val, ok2 := p.str(v.Content[i+1], kp)
				if !ok1 || !ok2 {
					continue
				}
				if _, dup := doc.Metadata.Labels[k]; dup {
					p.errorf(v.Content[i], kp, "duplicate label")
					continue
				}
				doc.Metadata.Labels[k] = val
			}
		}
	})
	if n.Kind == yaml.MappingNode && !sawName {
		p.errorf(n, "metadata.name", "required field is missing")
	}
}

var specFields = []string{"scope", "enforcement_mode", "default", "unattributed", "network", "tools", "capabilities", "filesystem", "process", "llm", "schedule", "budget", "data", "approval", "rules"}

func (p *parser) spec(doc *Document, n *yaml.Node, c *compiler) {
	s := &doc.Spec
	sawScope := false
	var unattributed *yaml.Node
	p.fields(n, "spec", specFields, func(key string, _, v *yaml.Node) {
		path := join("spec", key)
		switch key {
		case "scope":
			sawScope = true
			p.scope(doc, v, c)
		case "enforcement_mode":
			if m, ok := p.enum(v, path, "enforce", "observe", "disabled"); ok {
				s.EnforcementMode, _ = action.ParseMode(m)
			}
		case "default":
			if d, ok := p.enum(v, path, "allow", "deny"); ok {
				s.Default, _ = action.ParseDecision(d)
			}
		case "unattributed":
			unattributed = v
			if d, ok := p.enum(v, path, "allow", "deny"); ok {
				s.Unattributed, _ = action.ParseDecision(d)
			}
		case "network":
			p.network(s, v, c)
		case "tools":
			p.tools(s, v, c)
		case "capabilities":
			p.capabilities(s, v)
		case "filesystem":
			p.filesystem(s, v, c)
		case "process":
			p.process(s, v, c)
		case "llm":
			p.llm(s, v, c)
		case "schedule":
			p.schedule(s, v)
		case "budget":
			p.budget(s, v)
		case "data":
			p.data(s, v)
		case "approval":
			p.approval(s, v)
		case "rules":
			p.rules(s, v, c)
		}
	})
	if n.Kind == yaml.MappingNode && !sawScope {
		p.errorf(n, "spec.scope", "required field is missing")
	}
	if unattributed != nil && sawScope && s.Scope.Level != ScopeGlobal && s.Scope.Level != 0 {
		p.errorf(unattributed, "spec.unattributed", "only a global document may set it (this one has scope level %s)", scopeNames[s.Scope.Level])
	}
}

func (p *parser) scope(doc *Document, n *yaml.Node, c *compiler) {
	sc := &doc.Spec.Scope
	nodes := map[string]*yaml.Node{}
	var levelNode *yaml.Node
	p.fields(n, "spec.scope", []string{"level", "org", "team", "agent", "tool"}, func(key string, k, v *yaml.Node) {
		path := join("spec.scope", key)
		if key == "level" {
			levelNode = v
			if l, ok := p.enum(v, path, "global", "org", "team", "agent", "tool"); ok {
				for i, name := range scopeNames {
					if name == l {
						sc.Level = ScopeLevel(i)
					}
				}
			}
			return
		}
		nodes[key] = k
		s, ok := p.nonEmpty(v, path)
		if !ok {
			return
		}
		switch key {
		case "org":
			sc.Org = s
		case "team":
			sc.Team = s
		case "agent":
			sc.Agent = s
		case "tool":
			sc.Tool = s
			c.toolScope = p.glob(v, path)
		}
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if levelNode == nil {
		p.errorf(n, "spec.scope.level", "required field is missing")
		return
	}
	if sc.Level == 0 {
		return
	}
	var required, allowed []string
	switch sc.Level {
	case ScopeGlobal:
	case ScopeOrg:
		required, allowed = []string{"org"}, []string{"org"}
	case ScopeTeam:
		required, allowed = []string{"org", "team"}, []string{"org", "team"}
	case ScopeAgent:
		required, allowed = []string{"agent"}, []string{"org", "team", "agent"}
	case ScopeTool:
		required, allowed = []string{"tool"}, []string{"org", "team", "agent", "tool"}
	}
	for _, key := range []string{"org", "team", "agent", "tool"} {
		if k, ok := nodes[key]; ok && !slices.Contains(allowed, key) {
			p.errorf(k, join("spec.scope", key), "not allowed at level %q", sc.Level)
		}
	}
	for _, key := range required {
		if _, ok := nodes[key]; !ok {
			p.errorf(n, join("spec.scope", key), "required at level %q", sc.Level)
		}
	}
	var parts []string
	for _, s := range []string{sc.Org, sc.Team, sc.Agent} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	doc.explain = sc.Level.String()
	switch {
	case sc.Level == ScopeTool && len(parts) > 0:
		doc.explain += " " + sc.Tool + " for " + strings.Join(parts, "/")
	case sc.Level == ScopeTool:
		doc.explain += " " + sc.Tool
	case len(parts) > 0:
		doc.explain += " " + strings.Join(parts, "/")
	}
}

var hostLabelRE = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if !hostLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// normalizeHost validates an allowlist host and returns its canonical form.
func normalizeHost(h string) (string, error) {
	host := strings.TrimSuffix(strings.ToLower(h), ".")
	if host == "*" {
		return host, nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap().WithZone("").String(), nil
	}
	if _, _, err := netipSplitHostPort(host); err == nil {
		return "", fmt.Errorf("invalid host %q: put the port in ports, not in host", h)
	}
	rest := strings.TrimPrefix(host, "*.")
	if strings.Contains(rest, "*") {
		return "", fmt.Errorf("invalid host %q: the only wildcard allowed is a leading \"*.\"", h)
	}
	if !validHostname(rest) {
		return "", fmt.Errorf("invalid host %q", h)
	}
	return host, nil
}

func netipSplitHostPort(s string) (string, uint16, error) {
	ap, err := netip.ParseAddrPort(s)
	if err == nil {
		return ap.Addr().String(), ap.Port(), nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", 0, errors.New("no port")
	}
	port, err := strconv.ParseUint(s[i+1:], 10, 16)
	if err != nil {
		return "", 0, err
	}
	return s[:i], uint16(port), nil
}

var headerTokenRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
var secretRefRE = regexp.MustCompile(`\$\{([^}]*)\}`)
var secretNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (p *parser) network(s *Spec, n *yaml.Node, c *compiler) {
	ns := &NetworkSpec{Enforcement: NetworkDeny}
	p.fields(n, "spec.network", []string{"allowlist", "enforcement"}, func(key string, _, v *yaml.Node) {
		path := join("spec.network", key)
		switch key {
		case "enforcement":
			if e, ok := p.enum(v, path, "deny", "redirect"); ok {
				ns.Enforcement = NetworkEnforcement(e)
			}
		case "allowlist":
			items, ok := p.seq(v, path)
			if !ok {
				return
			}
			ns.Allowlist = make([]NetworkEntry, 0, len(items))
			for i, it := range items {
				ns.Allowlist = append(ns.Allowlist, p.networkEntry(it, index(path, i)))
			}
		}
	})
	if n.Kind == yaml.MappingNode {
		s.Network = ns
		c.network = true
	}
}

func (p *parser) networkEntry(n *yaml.Node, path string) NetworkEntry {
	var e NetworkEntry
	var sawHost, sawCIDR bool
	p.fields(n, path, []string{"host", "cidr", "ports", "inject"}, func(key string, _, v *yaml.Node) {
		fp := join(path, key)
		switch key {
		case "host":
			sawHost = true
			if h, ok := p.nonEmpty(v, fp); ok {
				host, err := normalizeHost(h)
				if err != nil {
					p.errorf(v, fp, "%v", err)
					return
				}
				e.Host = host
			}
		case "cidr":
			sawCIDR = true
			if s, ok := p.nonEmpty(v, fp); ok {
				pfx, err := netip.ParsePrefix(s)
				if err != nil {
					p.errorf(v, fp, "invalid CIDR %q", s)
					return
				}
				if pfx.Masked() != pfx {
					p.errorf(v, fp, "CIDR %q has host bits set (did you mean %q?)", s, pfx.Masked())
					return
				}
				e.CIDR = pfx
			}
		case "ports":
			items, ok := p.seq(v, fp)
			if !ok {
				return
			}
			if len(items) == 0 {
				p.errorf(v, fp, "must not be empty (omit ports to allow any port)")
			}
			for i, it := range items {
				if port, ok := p.integer(it, index(fp, i), 1, 65535); ok {
					e.Ports = append(e.Ports, uint16(port))
				}
			}
		case "inject":
			e.Inject = p.inject(v, fp)
		}
	})
	if n.Kind == yaml.MappingNode {
		switch {
		case sawHost && sawCIDR:
			p.errorf(n, path, "host and cidr are mutually exclusive: use one entry for each")
		case !sawHost && !sawCIDR:
			p.errorf(n, path, "one of host or cidr is required")
		}
	}
	return e
}

func (p *parser) inject(n *yaml.Node, path string) *Inject {
	in := &Inject{}
	var sawHeader, sawValue bool
	p.fields(n, path, []string{"header", "value"}, func(key string, _, v *yaml.Node) {
		fp := join(path, key)
		switch key {
		case "header":
			sawHeader = true
			if h, ok := p.nonEmpty(v, fp); ok {
				if !headerTokenRE.MatchString(h) {
					p.errorf(v, fp, "invalid HTTP header name %q", h)
				}
				in.Header = h
			}
		case "value":
			sawValue = true
			val, ok := p.nonEmpty(v, fp)
			if !ok {
				return
			}
			in.Value = val
			for _, m := range secretRefRE.FindAllStringSubmatch(val, -1) {
				if !secretNameRE.MatchString(m[1]) {
					p.errorf(v, fp, "invalid secret reference %q: use ${NAME} with letters, digits and '_'", m[0])
					continue
				}
				in.SecretRefs = append(in.SecretRefs, m[1])
			}
			if strings.Count(val, "${") != len(secretRefRE.FindAllString(val, -1)) {
				p.errorf(v, fp, "unterminated secret reference: use ${NAME}")
			}
		}
	})
	if n.Kind == yaml.MappingNode {
		if !sawHeader {
			p.errorf(n, join(path, "header"), "required field is missing")
		}
		if !sawValue {
			p.errorf(n, join(path, "value"), "required field is missing")
		}
	}
	return in
}

func (p *parser) tools(s *Spec, n *yaml.Node, c *compiler) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "spec.tools", "expected a mapping of tool name to settings, got %s", describe(n))
		return
	}
	seen := map[string]bool{}
	s.Tools = make([]ToolEntry, 0, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		pattern, ok := p.nonEmpty(k, "spec.tools")
		if !ok {
			continue
		}
		path := "spec.tools[" + pattern + "]"
		if seen[pattern] {
			p.errorf(k, path, "duplicate tool")
			continue
		}
		seen[pattern] = true
		g := p.glob(k, path)
		te := ToolEntry{Pattern: pattern}
		var cond condition
		var unparseable string
		var sawAllow, allowOK bool
		var limitNode, approvalNode, secretsNode *yaml.Node
		p.fields(v, path, []string{"allow", "limit_per_hour", "requires_approval_if", "secrets"}, func(key string, kn, fv *yaml.Node) {
			fp := join(path, key)
			switch key {
			case "allow":
				sawAllow = true
				te.Allow, allowOK = p.boolean(fv, fp)
			case "limit_per_hour":
				limitNode = kn
				if l, ok := p.integer(fv, fp, 0, 1_000_000_000); ok {
					te.LimitPerHour = int(l)
				}
			case "requires_approval_if":
				approvalNode = kn
				te.RequiresApprovalIf, cond, unparseable = p.approvalCondition(fv, fp)
			case "secrets":
				secretsNode = kn
				te.Secrets = p.secretNames(fv, fp)
			}
		})
		if v.Kind != yaml.MappingNode {
			continue
		}
		if !sawAllow {
			p.errorf(v, join(path, "allow"), "required field is missing")
		} else if allowOK && !te.Allow {
			if limitNode != nil {
				p.errorf(limitNode, join(path, "limit_per_hour"), "has no effect when allow is false")
			}
			if approvalNode != nil {
				p.errorf(approvalNode, join(path, "requires_approval_if"), "has no effect when allow is false")
			}
			if secretsNode != nil {
				p.errorf(secretsNode, join(path, "secrets"), "has no effect when allow is false")
			}
		}
		s.Tools = append(s.Tools, te)
		c.tools = append(c.tools, toolEntryPlan{glob: g, cond: cond, unparseable: unparseable})
	}
}

// toolSecretRE is the form of a secret name a tool may be granted: the
// names SecretsService stores.
var toolSecretRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]{0,63}$`)

// secretNames reads a list of secret names (upper case, as stored by
// `aasm secret set`), rejecting duplicates.
func (p *parser) secretNames(n *yaml.Node, path string) []string {
	items, ok := p.seq(n, path)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(items))
	for i, it := range items {
		fp := index(path, i)
		name, ok := p.nonEmpty(it, fp)
		if !ok {
			continue
		}
		switch {
		case !toolSecretRE.MatchString(name):
			p.errorf(it, fp, "invalid secret name %q: use upper case letters, digits and _, starting with a letter (e.g. GITHUB_TOKEN)", name)
		case slices.Contains(out, name):
			p.errorf(it, fp, "duplicate secret %q", name)
		default:
			out = append(out, name)
		}
	}
	return out
}

func (p *parser) capabilities(s *Spec, n *yaml.Node) {
	items, ok := p.seq(n, "spec.capabilities")
	if !ok {
		return
	}
	s.Capabilities = make([]action.Kind, 0, len(items))
	for i, it := range items {
		path := index("spec.capabilities", i)
		name, ok := p.str(it, path)
		if !ok {
			continue
		}
		k, ok := action.ParseKind(name)
		if !ok {
			p.errorf(it, path, "unknown action kind %q (valid: %s)", name, kindList())
			continue
		}
		if !slices.Contains(s.Capabilities, k) {
			s.Capabilities = append(s.Capabilities, k)
		}
	}
}

func kindList() string {
	var names []string
	for _, k := range action.Kinds() {
		names = append(names, k.String())
	}
	return strings.Join(names, ", ")
}

// pathGlobs compiles filesystem globs. "~/" stands for any home directory
// (/root/ and /home/*/).
func (p *parser) pathGlobs(n *yaml.Node, path string) ([]string, []fsEntry) {
	list, nodes := p.strList(n, path)
	if list == nil {
		return nil, nil
	}
	entries := make([]fsEntry, 0, len(list))
	for i, s := range list {
		fp := index(path, i)
		var pats []string
		switch {
		case strings.HasPrefix(s, "~/"):
			pats = []string{"/root/" + s[2:], "/home/*/" + s[2:]}
		case strings.HasPrefix(s, "/"), strings.HasPrefix(s, "**"):
			pats = []string{s}
		default:
			p.errorf(nodes[i], fp, "path pattern %q must be absolute, start with ** or start with ~/", s)
			continue
		}
		var e fsEntry
		for _, pat := range pats {
			g, err := compileGlob(pat)
			if err != nil {
				p.errorf(nodes[i], fp, "%v", err)
				break
			}
			e.globs = append(e.globs, g)
		}
		entries = append(entries, e)
	}
	return list, entries
}

func (p *parser) filesystem(s *Spec, n *yaml.Node, c *compiler) {
	fs := &FilesystemSpec{}
	p.fields(n, "spec.filesystem", []string{"read", "write", "deny"}, func(key string, _, v *yaml.Node) {
		path := join("spec.filesystem", key)
		list, entries := p.pathGlobs(v, path)
		switch key {
		case "read":
			fs.Read, c.fsRead = list, entries
		case "write":
			fs.Write, c.fsWrite = list, entries
		case "deny":
			fs.Deny, c.fsDeny = list, entries
		}
	})
	if n.Kind == yaml.MappingNode {
		s.Filesystem = fs
	}
}

func (p *parser) globList(n *yaml.Node, path string) ([]string, []*glob) {
	list, nodes := p.strList(n, path)
	if list == nil {
		return nil, nil
	}
	globs := make([]*glob, 0, len(list))
	for i, s := range list {
		g, err := compileGlob(s)
		if err != nil {
			p.errorf(nodes[i], index(path, i), "%v", err)
			continue
		}
		globs = append(globs, g)
	}
	return list, globs
}

func (p *parser) process(s *Spec, n *yaml.Node, c *compiler) {
	ps := &ProcessSpec{}
	p.fields(n, "spec.process", []string{"allow", "deny"}, func(key string, _, v *yaml.Node) {
		path := join("spec.process", key)
		switch key {
		case "allow":
			ps.Allow, c.procAllow = p.globList(v, path)
		case "deny":
			ps.Deny, c.procDeny = p.globList(v, path)
		}
	})
	if n.Kind == yaml.MappingNode {
		s.Process = ps
	}
}

func (p *parser) llm(s *Spec, n *yaml.Node, c *compiler) {
	ls := &LLMSpec{}
	p.fields(n, "spec.llm", []string{"providers", "models"}, func(key string, _, v *yaml.Node) {
		path := join("spec.llm", key)
		switch key {
		case "providers":
			list, _ := p.strList(v, path)
			if list != nil {
				for i := range list {
					list[i] = strings.ToLower(list[i])
				}
				ls.Providers = list
			}
		case "models":
			ls.Models, c.llmModels = p.globList(v, path)
		}
	})
	if n.Kind == yaml.MappingNode {
		s.LLM = ls
	}
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

var clockRE = regexp.MustCompile(`^([0-9]{2}):([0-9]{2})$`)

func (p *parser) clock(n *yaml.Node, path string, end bool) (int, bool) {
	s, ok := p.str(n, path)
	if !ok {
		return 0, false
	}
	m := clockRE.FindStringSubmatch(s)
	if m == nil {
		p.errorf(n, path, "invalid time %q: use HH:MM (24-hour clock)", s)
		return 0, false
	}
	h, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	if h > 24 || mi > 59 || (h == 24 && mi != 0) || (h == 24 && !end) {
		if h == 24 && mi == 0 && !end {
			p.errorf(n, path, "invalid time %q: 24:00 is only valid as an end time", s)
		} else {
			p.errorf(n, path, "invalid time %q: use HH:MM between 00:00 and 24:00", s)
		}
		return 0, false
	}
	return h*60 + mi, true
}

func (p *parser) location(n *yaml.Node, path string) *time.Location {
	s, ok := p.nonEmpty(n, path)
	if !ok {
		return nil
	}
	if strings.EqualFold(s, "local") {
		p.errorf(n, path, "time zone %q is ambiguous: use an IANA name such as \"Europe/Berlin\" or \"UTC\"", s)
		return nil
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		p.errorf(n, path, "unknown time zone %q: use an IANA name such as \"Europe/Berlin\" or \"UTC\"", s)
		return nil
	}
	return loc
}

func (p *parser) schedule(s *Spec, n *yaml.Node) {
	ss := &ScheduleSpec{Timezone: time.UTC}
	sawHours := false
	p.fields(n, "spec.schedule", []string{"timezone", "active_hours"}, func(key string, _, v *yaml.Node) {
		path := join("spec.schedule", key)
		switch key {
		case "timezone":
			if loc := p.location(v, path); loc != nil {
				ss.Timezone = loc
			}
		case "active_hours":
			sawHours = true
			items, ok := p.seq(v, path)
			if !ok {
				return
			}
			if len(items) == 0 {
				p.errorf(v, path, "must list at least one window (remove schedule to allow all hours)")
			}
			for i, it := range items {
				if w, ok := p.window(it, index(path, i)); ok {
					ss.ActiveHours = append(ss.ActiveHours, w)
				}
			}
		}
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if !sawHours {
		p.errorf(n, "spec.schedule.active_hours", "required field is missing")
	}
	s.Schedule = ss
}

func (p *parser) window(n *yaml.Node, path string) (Window, bool) {
	var w Window
	var sawStart, sawEnd bool
	var endNode *yaml.Node
	ok := true
	p.fields(n, path, []string{"days", "start", "end"}, func(key string, _, v *yaml.Node) {
		fp := join(path, key)
		switch key {
		case "days":
			items, good := p.seq(v, fp)
			if !good {
				ok = false
				return
			}
			if len(items) == 0 {
				p.errorf(v, fp, "must not be empty (omit days for every day)")
				ok = false
			}
			for i, it := range items {
				d, good := p.str(it, index(fp, i))
				if !good {
					ok = false
					continue
				}
				wd, known := dayNames[strings.ToLower(d)]
				if !known {
					p.errorf(it, index(fp, i), "invalid day %q (valid: mon, tue, wed, thu, fri, sat, sun)", d)
					ok = false
					continue
				}
				if !slices.Contains(w.Days, wd) {
					w.Days = append(w.Days, wd)
				}
			}
		case "start":
			sawStart = true
			var good bool
			w.Start, good = p.clock(v, fp, false)
			ok = ok && good
		case "end":
			sawEnd = true
			endNode = v
			var good bool
			w.End, good = p.clock(v, fp, true)
			ok = ok && good
		}
	})
	if n.Kind != yaml.MappingNode {
		return w, false
	}
	if !sawStart {
		p.errorf(n, join(path, "start"), "required field is missing")
		ok = false
	}
	if !sawEnd {
		p.errorf(n, join(path, "end"), "required field is missing")
		ok = false
	}
	if ok && w.Start == w.End {
		p.errorf(endNode, join(path, "end"), "window is empty: start and end are equal (use 00:00 to 24:00 for the whole day)")
		ok = false
	}
	return w, ok
}

func (p *parser) budget(s *Spec, n *yaml.Node) {
	b := &BudgetSpec{Per: BudgetPerAgent, Timezone: time.UTC, ActionOnExceed: BudgetDeny}
	var sawLimit bool
	p.fields(n, "spec.budget", []string{"daily_usd", "monthly_usd", "per", "timezone", "action_on_exceed"}, func(key string, _, v *yaml.Node) {
		path := join("spec.budget", key)
		switch key {
		case "daily_usd":
			sawLimit = true
			b.DailyUSD, _ = p.money(v, path)
		case "monthly_usd":
			sawLimit = true
			b.MonthlyUSD, _ = p.money(v, path)
		case "per":
			if e, ok := p.enum(v, path, "agent", "team", "org"); ok {
				b.Per = BudgetPer(e)
			}
		case "timezone":
			if loc := p.location(v, path); loc != nil {
				b.Timezone = loc
			}
		case "action_on_exceed":
			if e, ok := p.enum(v, path, "deny", "suspend"); ok {
				b.ActionOnExceed = BudgetAction(e)
			}
		}
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if !sawLimit {
		p.errorf(n, "spec.budget", "set daily_usd, monthly_usd or both")
	}
	s.Budget = b
}

func (p *parser) data(s *Spec, n *yaml.Node) {
	d := &DataSpec{CredentialAction: CredentialBlock}
	p.fields(n, "spec.data", []string{"sensitive_patterns", "credential_action"}, func(key string, _, v *yaml.Node) {
		path := join("spec.data", key)
		switch key {
		case "credential_action":
			if e, ok := p.enum(v, path, "block", "redact_only", "alert_only", "alert_and_redact"); ok {
				d.CredentialAction = CredentialAction(e)
			}
		case "sensitive_patterns":
			items, ok := p.seq(v, path)
			if !ok {
				return
			}
			names := map[string]bool{}
			for i, it := range items {
				fp := index(path, i)
				var sp SensitivePattern
				var sawName, sawRegex bool
				p.fields(it, fp, []string{"name", "regex"}, func(key string, _, v *yaml.Node) {
					switch key {
					case "name":
						sawName = true
						if name, ok := p.nonEmpty(v, join(fp, key)); ok {
							if names[name] {
								p.errorf(v, join(fp, key), "duplicate pattern name %q", name)
							}
							names[name] = true
							sp.Name = name
						}
					case "regex":
						sawRegex = true
						if src, ok := p.nonEmpty(v, join(fp, key)); ok {
							re, err := regexp.Compile(src)
							if err != nil {
								p.errorf(v, join(fp, key), "invalid regular expression %q: %s", src, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
								return
							}
							sp.Regex = re
						}
					}
				})
				if it.Kind != yaml.MappingNode {
					continue
				}
				if !sawName {
					p.errorf(it, join(fp, "name"), "required field is missing")
				}
				if !sawRegex {
					p.errorf(it, join(fp, "regex"), "required field is missing")
				}
				d.SensitivePatterns = append(d.SensitivePatterns, sp)
			}
		}
	})
	if n.Kind == yaml.MappingNode {
		s.Data = d
	}
}

func (p *parser) approval(s *Spec, n *yaml.Node) {
	a := &ApprovalSpec{}
	p.fields(n, "spec.approval", []string{"timeout", "escalation_role"}, func(key string, _, v *yaml.Node) {
		path := join("spec.approval", key)
		switch key {
		case "timeout":
			str, ok := p.str(v, path)
			if !ok {
				return
			}
			d, err := time.ParseDuration(str)
			if err != nil || d <= 0 {
				p.errorf(v, path, "invalid duration %q: use a positive Go duration such as \"5m\" or \"1h30m\"", str)
				return
			}
			a.Timeout = d
		case "escalation_role":
			a.EscalationRole, _ = p.nonEmpty(v, path)
		}
	})
	if n.Kind == yaml.MappingNode {
		s.Approval = a
	}
}

var ruleIDRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$`)

// reservedRuleIDs are the ids of section-derived rules without an index.
var reservedRuleIDs = []string{"default", "capabilities", "schedule", "network.allowlist", "filesystem.read", "filesystem.write", "process.allow", "llm", "llm.providers", "llm.models"}

func (p *parser) rules(s *Spec, n *yaml.Node, c *compiler) {
	items, ok := p.seq(n, "spec.rules")
	if !ok {
		return
	}
	firstAt := map[string]int{}
	for i, it := range items {
		path := index("spec.rules", i)
		var r Rule
		var rp rulePlan
		var sawID, sawDecision bool
		p.fields(it, path, []string{"id", "priority", "match", "when", "decision", "reason"}, func(key string, _, v *yaml.Node) {
			fp := join(path, key)
			switch key {
			case "id":
				sawID = true
				id, ok := p.nonEmpty(v, fp)
				if !ok {
					return
				}
				switch {
				case !ruleIDRE.MatchString(id):
					p.errorf(v, fp, "invalid rule id %q: use letters, digits, '.', '_' and '-' (at most 128)", id)
				case slices.Contains(reservedRuleIDs, id):
					p.errorf(v, fp, "rule id %q is reserved for a section rule", id)
				default:
					if line, dup := firstAt[id]; dup {
						p.errorf(v, fp, "duplicate rule id %q (first defined at line %d)", id, line)
					} else {
						firstAt[id] = v.Line
					}
				}
				r.ID = id
			case "priority":
				if pr, ok := p.integer(v, fp, -1_000_000, 1_000_000); ok {
					r.Priority = int(pr)
				}
			case "match":
				p.match(&r, &rp, v, fp)
			case "when":
				r.When, rp.when = p.cel(v, fp)
			case "decision":
				sawDecision = true
				if d, ok := p.enum(v, fp, "allow", "deny", "pending", "redact"); ok {
					r.Decision, _ = action.ParseDecision(d)
				}
			case "reason":
				r.Reason, _ = p.str(v, fp)
			}
		})
		if it.Kind != yaml.MappingNode {
			continue
		}
		if !sawID {
			p.errorf(it, join(path, "id"), "required field is missing")
		}
		if !sawDecision {
			p.errorf(it, join(path, "decision"), "required field is missing")
		}
		s.Rules = append(s.Rules, r)
		c.rules = append(c.rules, rp)
	}
}

func (p *parser) match(r *Rule, rp *rulePlan, n *yaml.Node, path string) {
	p.fields(n, path, []string{"action", "name", "resource"}, func(key string, _, v *yaml.Node) {
		fp := join(path, key)
		switch key {
		case "action":
			var items []*yaml.Node
			if v.Kind == yaml.ScalarNode {
				items = []*yaml.Node{v}
			} else if v.Kind == yaml.SequenceNode {
				items = v.Content
				if len(items) == 0 {
					p.errorf(v, fp, "must not be empty (omit action to match every kind)")
				}
			} else {
				p.errorf(v, fp, "expected an action kind or a list of them, got %s", describe(v))
				return
			}
			any := false
			var kinds []action.Kind
			for i, it := range items {
				ip := fp
				if v.Kind == yaml.SequenceNode {
					ip = index(fp, i)
				}
				name, ok := p.str(it, ip)
				if !ok {
					continue
				}
				if name == "*" {
					any = true
					continue
				}
				k, ok := action.ParseKind(name)
				if !ok {
					p.errorf(it, ip, "unknown action kind %q (valid: %s, or *)", name, kindList())
					continue
				}
				if !slices.Contains(kinds, k) {
					kinds = append(kinds, k)
				}
			}
			if !any {
				r.Match.Actions = kinds
			}
		case "name":
			if g := p.glob(v, fp); g != nil {
				r.Match.Name = g.pattern
				rp.name = g
			}
		case "resource":
			if g := p.glob(v, fp); g != nil {
				r.Match.Resource = g.pattern
				rp.resource = g
			}
		}
	})
}
