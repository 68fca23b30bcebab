package deploy

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction with its continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
}

// stage is one FROM … section.
type stage struct {
	name  string
	image string
	ins   []instruction
}

// dockerfile is a parsed Dockerfile.
type dockerfile struct {
	path   string
	syntax string // the "# syntax=" directive
	stages []*stage
}

// parseDockerfile reads the instructions of path (comments and continuations
// handled; heredocs are not used here and are rejected).
func parseDockerfile(p string) (*dockerfile, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read dockerfile: %w", err)
	}
	return parseDockerfileBytes(p, b)
}

func parseDockerfileBytes(p string, b []byte) (*dockerfile, error) {
	df := &dockerfile{path: p}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var cur strings.Builder
	start, n := 0, 0
	flush := func() error {
		s := strings.TrimSpace(cur.String())
		cur.Reset()
		if s == "" {
			return nil
		}
		cmd, args, _ := strings.Cut(s, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if strings.Contains(in.args, "<<") {
			return fmt.Errorf("%s:%d: heredocs are not supported by this check", p, in.line)
		}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			st := &stage{}
			switch {
			case len(f) == 1:
				st.image = f[0]
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.image, st.name = f[0], f[2]
			default:
				return fmt.Errorf("%s:%d: FROM %q is not \"IMAGE [AS NAME]\"", p, in.line, in.args)
			}
			df.stages = append(df.stages, st)
			return nil
		}
		if len(df.stages) == 0 {
			if in.cmd == "ARG" {
				return nil
			}
			return fmt.Errorf("%s:%d: %s before the first FROM", p, in.line, in.cmd)
		}
		st := df.stages[len(df.stages)-1]
		st.ins = append(st.ins, in)
		return nil
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trim := strings.TrimSpace(line)
		if strings.HasPrefix(trim, "#") {
			if cur.Len() == 0 && df.syntax == "" && len(df.stages) == 0 && strings.HasPrefix(trim, "# syntax=") {
				df.syntax = strings.TrimPrefix(trim, "# syntax=")
			}
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(trim, "\\") {
			cur.WriteString(strings.TrimSuffix(trim, "\\") + " ")
			continue
		}
		cur.WriteString(trim)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return df, sc.Err()
}

// goBuildCmd is the go build a Dockerfile runs.
type goBuildCmd struct {
	pkg, out   string
	rawLDFlags string
	trimpath   bool
	cgoOff     bool
}

// ldflags returns the -ldflags value with ${VERSION} set to version.
func (g goBuildCmd) ldflags(version string) string {
	return strings.NewReplacer("${VERSION}", version, "$VERSION", version).Replace(g.rawLDFlags)
}

var (
	goBuildRe = regexp.MustCompile(`go build\s+(.*)$`)
	ldflagsRe = regexp.MustCompile(`-ldflags\s+"([^"]*)"`)
	outRe     = regexp.MustCompile(`-o\s+(\S+)`)
)

// goBuild finds the one "go build" of the Dockerfile's stages.
func (df *dockerfile) goBuild() (goBuildCmd, error) {
	var found []goBuildCmd
	for _, st := range df.stages {
		for _, in := range st.ins {
			if in.cmd != "RUN" {
				continue
			}
			m := goBuildRe.FindStringSubmatch(in.args)
			if m == nil {
				continue
			}
			g := goBuildCmd{cgoOff: strings.Contains(in.args, "CGO_ENABLED=0 go build"), trimpath: strings.Contains(m[1], "-trimpath")}
			rest := m[1]
			if l := ldflagsRe.FindStringSubmatch(rest); l != nil {
				g.rawLDFlags = l[1]
				rest = strings.Replace(rest, l[0], "", 1)
			}
			if o := outRe.FindStringSubmatch(rest); o != nil {
				g.out = o[1]
				rest = strings.Replace(rest, o[0], "", 1)
			}
			for _, f := range strings.Fields(rest) {
				if strings.HasPrefix(f, "./") {
					g.pkg = f
				}
			}
			found = append(found, g)
		}
	}
	if len(found) != 1 {
		return goBuildCmd{}, fmt.Errorf("want exactly one RUN … go build, found %d", len(found))
	}
	if found[0].pkg == "" || found[0].out == "" {
		return goBuildCmd{}, fmt.Errorf("the go build names no ./package or no -o output")
	}
	return found[0], nil
}

// lintDockerfile checks the rules every image follows: multi-stage, a
// static CGO-free -trimpath build, a distroless-static or scratch final
// stage that runs as a numeric non-root user, pinned base images, no ADD,
// COPY --from only of earlier stages, and an ENTRYPOINT that is the binary.
func lintDockerfile(df *dockerfile, binary string) errs {
	var e errs
	if !strings.HasPrefix(df.syntax, "docker/dockerfile:1") {
		e.add("first line must be \"# syntax=docker/dockerfile:1\" (RUN --mount needs BuildKit's frontend), got %q", df.syntax)
	}
	if len(df.stages) < 2 {
		e.add("want a multi-stage build (builder + final), found %d stage(s)", len(df.stages))
		return e
	}
	names := map[string]bool{}
	for i, st := range df.stages {
		img := st.image
		if names[img] {
			// FROM an earlier stage
		} else if !strings.Contains(path.Base(img), ":") && !strings.Contains(img, "@sha256:") && img != "scratch" {
			e.add("stage %d: base image %q has no tag or digest", i, img)
		} else if strings.HasSuffix(img, ":latest") {
			e.add("stage %d: base image %q uses :latest", i, img)
		}
		for _, in := range st.ins {
			switch in.cmd {
			case "ADD":
				e.add("line %d: ADD (use COPY; never fetch URLs at build time)", in.line)
			case "COPY":
				for _, f := range strings.Fields(in.args) {
					if from, ok := strings.CutPrefix(f, "--from="); ok && !names[from] {
						e.add("line %d: COPY --from=%s names no earlier stage", in.line, from)
					}
				}
			}
		}
		if st.name != "" {
			names[st.name] = true
		}
	}
	g, err := df.goBuild()
	if err != nil {
		e.add("%v", err)
	} else {
		if !g.cgoOff {
			e.add("the go build must run as \"CGO_ENABLED=0 go build\" (a static binary)")
		}
		if !g.trimpath {
			e.add("the go build must use -trimpath")
		}
		if path.Base(g.out) != binary {
			e.add("the go build writes %s, want …/%s", g.out, binary)
		}
	}
	final := df.stages[len(df.stages)-1]
	if final.image != "scratch" && !strings.HasPrefix(final.image, "gcr.io/distroless/static") {
		e.add("final stage FROM %s: want gcr.io/distroless/static… or scratch (static, no shell)", final.image)
	}
	var user, entry string
	copied := false
	for _, in := range final.ins {
		switch in.cmd {
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entry = in.args
		case "COPY":
			if g.out != "" && strings.Contains(in.args, " "+g.out+" ") {
				copied = true
			}
		case "RUN":
			e.add("line %d: RUN in the final stage (it has no shell)", in.line)
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	switch {
	case user == "":
		e.add("final stage has no USER: the image would run as root")
	case !regexp.MustCompile(`^[0-9]+$`).MatchString(uid):
		e.add("USER %q: use a numeric uid so Kubernetes runAsNonRoot can check it", user)
	case uid == "0":
		e.add("USER %q is root", user)
	}
	if !copied && g.out != "" {
		e.add("final stage does not COPY --from the build output %s", g.out)
	}
	var ep []string
	if err := json.Unmarshal([]byte(entry), &ep); err != nil || len(ep) == 0 {
		e.add("ENTRYPOINT %q: want the exec (JSON array) form", entry)
	} else if path.Base(ep[0]) != binary {
		e.add("ENTRYPOINT runs %s, want the %s binary", ep[0], binary)
	}
	return e
}

// mainPackages lists the command packages that get an image: cmd/* and the
// example agent.
func mainPackages(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{"agent": "./examples/agent"}
	ents, err := os.ReadDir(filepath.Join(repoRoot(t), "cmd"))
	if err != nil {
		t.Fatalf("read cmd: %v", err)
	}
	for _, e := range ents {
		if e.IsDir() {
			out[e.Name()] = "./cmd/" + e.Name()
		}
	}
	return out
}

// TestDockerfiles lints every Dockerfile and checks there is one per binary,
// each building the package of the same name.
func TestDockerfiles(t *testing.T) {
	want := mainPackages(t)
	got := map[string]bool{}
	for _, p := range files(t, filepath.Join(deployDir(t), "docker"), ".Dockerfile") {
		name := strings.TrimSuffix(filepath.Base(p), ".Dockerfile")
		got[name] = true
		t.Run(name, func(t *testing.T) {
			df, err := parseDockerfile(p)
			if err != nil {
				t.Fatal(err)
			}
			lintDockerfile(df, name).report(t, filepath.Base(p))
			if g, err := df.goBuild(); err == nil && want[name] != "" && g.pkg != want[name] {
				t.Errorf("%s builds %s, want %s", filepath.Base(p), g.pkg, want[name])
			}
			if _, err := os.Stat(p + ".dockerignore"); err != nil {
				t.Errorf("%s has no %s.dockerignore: the whole work tree (data/, bin/) would be sent as build context", filepath.Base(p), filepath.Base(p))
			}
		})
	}
	for _, name := range sortedKeys(want) {
		if !got[name] {
			t.Errorf("binary %s (%s) has no deploy/docker/%s.Dockerfile", name, want[name], name)
		}
	}
}

// TestDockerfileLintCatches shows the lint fails on the mistakes it exists for.
func TestDockerfileLintCatches(t *testing.T) {
	for _, c := range []struct{ name, df, want string }{
		{"root", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM gcr.io/distroless/static-debian12\nCOPY --from=build /out/x /x\nENTRYPOINT [\"/x\"]\n", "no USER"},
		{"user-root", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM scratch\nCOPY --from=build /out/x /x\nUSER 0\nENTRYPOINT [\"/x\"]\n", "is root"},
		{"cgo", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nRUN go build -trimpath -o /out/x ./cmd/x\nFROM scratch\nCOPY --from=build /out/x /x\nUSER 65532\nENTRYPOINT [\"/x\"]\n", "CGO_ENABLED=0"},
		{"add-url", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nADD https://example.com/x.tgz /x\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM scratch\nCOPY --from=build /out/x /x\nUSER 65532\nENTRYPOINT [\"/x\"]\n", "ADD"},
		{"single-stage", "# syntax=docker/dockerfile:1\nFROM golang:1.26\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\n", "multi-stage"},
		{"latest", "# syntax=docker/dockerfile:1\nFROM golang:latest AS build\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM scratch\nCOPY --from=build /out/x /x\nUSER 65532\nENTRYPOINT [\"/x\"]\n", ":latest"},
		{"debian-final", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM debian:12\nCOPY --from=build /out/x /x\nUSER 65532\nENTRYPOINT [\"/x\"]\n", "distroless"},
		{"shell-entry", "# syntax=docker/dockerfile:1\nFROM golang:1.26 AS build\nRUN CGO_ENABLED=0 go build -trimpath -o /out/x ./cmd/x\nFROM scratch\nCOPY --from=build /out/x /x\nUSER 65532\nENTRYPOINT /x\n", "exec (JSON array) form"},
	} {
		t.Run(c.name, func(t *testing.T) {
			df, err := parseDockerfileBytes(c.name, []byte(c.df))
			if err != nil {
				t.Fatal(err)
			}
			if e := lintDockerfile(df, "x"); !e.contains(c.want) {
				t.Errorf("lint found %v, want a problem mentioning %q", e, c.want)
			}
		})
	}
}

// versionArgs is how each binary prints its version, for the binaries whose
// Dockerfile stamps one with -X.
var versionArgs = map[string][]string{
	"aa-gateway": {"-version"},
	"aa-runtime": {"version"},
	"aasm":       {"version"},
}

// TestImageBinariesBuild builds each image's binary exactly as its
// Dockerfile does (CGO_ENABLED=0, -trimpath, the same -ldflags with a test
// VERSION) and runs the result: the version stamp must come back, which
// proves the -X symbol path is right.
func TestImageBinariesBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the static builds of every image's binary")
	}
	for _, p := range files(t, filepath.Join(deployDir(t), "docker"), ".Dockerfile") {
		name := strings.TrimSuffix(filepath.Base(p), ".Dockerfile")
		t.Run(name, func(t *testing.T) {
			df, err := parseDockerfile(p)
			if err != nil {
				t.Fatal(err)
			}
			g, err := df.goBuild()
			if err != nil {
				t.Fatal(err)
			}
			bin := buildBinary(t, name, g.pkg, g.ldflags(testVersion))
			if err := staticELF(bin); err != nil {
				t.Errorf("%s: %v: the distroless static image has no C library to load it", name, err)
			}
			args, stamped := versionArgs[name]
			if strings.Contains(g.rawLDFlags, "-X ") != stamped {
				t.Fatalf("%s: -X in ldflags is %v but versionArgs knows it as %v; keep them in step", name, !stamped, stamped)
			}
			if !stamped {
				return
			}
			out, err := exec.Command(bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %v: %v\n%s", name, args, err, out)
			}
			if !strings.Contains(string(out), testVersion) {
				t.Errorf("%s %v printed %q: the -ldflags -X target does not stamp the version", name, args, strings.TrimSpace(string(out)))
			}
		})
	}
}

// staticELF returns an error when the ELF file at path needs a dynamic
// loader (PT_INTERP) or shared libraries (DT_NEEDED).
func staticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (it has an ELF interpreter)")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("read imported libraries: %w", err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("needs shared libraries %v", libs)
	}
	return nil
}

// TestStaticELFCatches shows staticELF rejects a dynamically linked binary
// (the system's shell or env, which link the C library on Debian).
func TestStaticELFCatches(t *testing.T) {
	for _, p := range []string{"/bin/sh", "/usr/bin/env"} {
		err := staticELF(p)
		if err != nil && (strings.Contains(err.Error(), "dynamically linked") || strings.Contains(err.Error(), "shared libraries")) {
			return
		}
	}
	t.Skip("neither /bin/sh nor /usr/bin/env is a dynamically linked ELF binary here; nothing to check staticELF against")
}

// TestDockerignoreKeepsBuildInputs checks that no file a binary embeds, and
// no source the final stage copies, is left out of the build context.
func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	root := repoRoot(t)
	for _, p := range files(t, filepath.Join(deployDir(t), "docker"), ".Dockerfile") {
		name := strings.TrimSuffix(filepath.Base(p), ".Dockerfile")
		t.Run(name, func(t *testing.T) {
			patterns := dockerignore(t, p+".dockerignore")
			df, err := parseDockerfile(p)
			if err != nil {
				t.Fatal(err)
			}
			g, err := df.goBuild()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("go", "list", "-deps", "-f", `{{if .EmbedFiles}}{{.Dir}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}`, g.pkg)
			cmd.Dir = root
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list %s: %v", g.pkg, err)
			}
			var inputs []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 || !strings.HasPrefix(f[0], root) {
					continue
				}
				rel, _ := filepath.Rel(root, f[0])
				for _, e := range f[1:] {
					inputs = append(inputs, filepath.ToSlash(filepath.Join(rel, e)))
				}
			}
			for _, st := range df.stages {
				for _, in := range st.ins {
					if in.cmd != "COPY" {
						continue
					}
					for _, f := range strings.Fields(in.args) {
						if rel, ok := strings.CutPrefix(f, "/src/"); ok {
							inputs = append(inputs, rel)
						}
					}
				}
			}
			if len(inputs) == 0 && name == "aa-gateway" {
				t.Fatal("found no embedded files for aa-gateway; the go list query is broken")
			}
			for _, in := range inputs {
				if pat := ignoredBy(patterns, in); pat != "" {
					t.Errorf("%s is needed by the build but %s.dockerignore excludes it (%q)", in, filepath.Base(p), pat)
				}
			}
		})
	}
}

// dockerignore reads the patterns of a .dockerignore file.
func dockerignore(t *testing.T, p string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(string(read(t, p)), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf("%s: exceptions (!) are not understood by this check; keep the file a plain deny list", p)
		}
		out = append(out, strings.TrimSuffix(l, "/"))
	}
	return out
}

// ignoredBy returns the pattern excluding rel (slash-separated, relative to
// the context root), or "". It understands the forms used here: a path
// (which excludes everything below it), "**/NAME" and "**/*.ext" globs.
func ignoredBy(patterns []string, rel string) string {
	segs := strings.Split(rel, "/")
	for _, p := range patterns {
		if rest, ok := strings.CutPrefix(p, "**/"); ok {
			for i := range segs {
				if ok, _ := path.Match(rest, segs[i]); ok {
					return p
				}
			}
			continue
		}
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return p
		}
		if ok, _ := path.Match(p, rel); ok {
			return p
		}
	}
	return ""
}

// TestIgnoredBy pins the matcher the dockerignore check relies on.
func TestIgnoredBy(t *testing.T) {
	pats := []string{".git", "docs", "**/testdata", "**/*_test.go"}
	for rel, want := range map[string]string{
		"docs/a.md":                      "docs",
		"policy/testdata/x.yaml":         "**/testdata",
		"gateway/core_test.go":           "**/*_test.go",
		"storage/sqlite/migrations/x.sq": "",
		"docsx/a":                        "",
		"examples/policies/global.yaml":  "",
	} {
		if got := ignoredBy(pats, rel); got != want {
			t.Errorf("ignoredBy(%q) = %q, want %q", rel, got, want)
		}
	}
}
