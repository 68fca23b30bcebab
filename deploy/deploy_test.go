package deploy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/agent-assembly/agent-assembly/gateway/server"
)

// update rewrites the generated manifests (the policies and Envoy ConfigMaps)
// from their sources instead of comparing them.
var update = flag.Bool("update", false, "rewrite generated manifests under deploy/kubernetes from their sources")

// testVersion is stamped into every binary the Dockerfile checks build, and
// must come back from the binary's version command.
const testVersion = "deploytest-0.0.0-check"

// TestMain removes the binaries the checks built.
func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// repoRoot is the module root (the parent of deploy/).
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the test file's path")
	}
	return filepath.Dir(filepath.Dir(file))
}

// deployDir is deploy/ itself.
func deployDir(t testing.TB) string { return filepath.Join(repoRoot(t), "deploy") }

// read returns a file's content or fails the test.
func read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// files lists the files under dir whose names end in one of exts, sorted.
func files(t testing.TB, dir string, exts ...string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		for _, e := range exts {
			if !d.IsDir() && strings.HasSuffix(d.Name(), e) {
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	sort.Strings(out)
	return out
}

// errs collects the problems a check finds, so bad fixtures can be shown to
// be caught.
type errs []error

func (e *errs) add(format string, args ...any) { *e = append(*e, fmt.Errorf(format, args...)) }

// report fails t with every problem, prefixed by where.
func (e errs) report(t testing.TB, where string) {
	t.Helper()
	for _, err := range e {
		t.Errorf("%s: %v", where, err)
	}
}

// contains reports whether some problem's text contains s.
func (e errs) contains(s string) bool {
	for _, err := range e {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// gatewayEnv maps each AA_* variable of aa-gateway to its flag.
func gatewayEnv() map[string]string {
	m := map[string]string{}
	for _, s := range server.Settings() {
		m[s.Env] = s.Flag
	}
	return m
}

// checkGatewayEnv checks that every AA_* variable in env is a gateway
// setting and that the configuration they make passes Config.Validate
// (the same path aa-gateway takes at start).
func checkGatewayEnv(env map[string]string) errs {
	var e errs
	known := gatewayEnv()
	for k := range env {
		if !strings.HasPrefix(k, "AA_") {
			continue
		}
		if _, ok := known[k]; !ok {
			e.add("environment variable %s is not an aa-gateway setting (gateway/server.Settings)", k)
		}
	}
	cfg := server.DefaultConfig()
	fs := flag.NewFlagSet("aa-gateway", flag.ContinueOnError)
	if err := server.Bind(fs, &cfg, func(k string) string { return env[k] }); err != nil {
		e.add("gateway environment: %v", err)
		return e
	}
	if err := cfg.Validate(); err != nil {
		e.add("gateway configuration is invalid: %v", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	// A wildcard listen address is no address for a sidecar to call: xDS
	// would hand Envoy 0.0.0.0 as the ext_authz cluster.
	if host, _, err := net.SplitHostPort(cfg.GRPCAddr); err == nil && cfg.XDSAdvertiseAddr == "" {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			e.add("--grpc-addr %s is a wildcard address: set AA_XDS_ADVERTISE_ADDR to the host:port Envoy sidecars reach the gateway at", cfg.GRPCAddr)
		}
	}
	return e
}

// sourceEnv lists the AA_* string literals in the non-test Go files of the
// given directories (relative to the module root): the environment variables
// that code reads.
func sourceEnv(t testing.TB, dirs ...string) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`^AA_[A-Z0-9_]+`)
	out := map[string]bool{}
	for _, d := range dirs {
		fset := token.NewFileSet()
		names, err := filepath.Glob(filepath.Join(repoRoot(t), d, "*.go"))
		if err != nil || len(names) == 0 {
			t.Fatalf("no Go files in %s (%v)", d, err)
		}
		for _, name := range names {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, name, nil, 0)
			if err != nil {
				t.Fatalf("parse %s: %v", name, err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil {
						if m := re.FindString(s); m != "" {
							out[m] = true
						}
					}
				}
				return true
			})
		}
	}
	return out
}

// built holds the binaries that the Dockerfile checks build, by name.
var (
	buildMu sync.Mutex
	builtAt = map[string]string{}
	binDir  string
)

// buildBinary runs "go build" of pkg with CGO_ENABLED=0, -trimpath and the
// given -ldflags (as the Dockerfile does) and returns the binary's path.
// Builds are cached per name for the test binary's life.
func buildBinary(t testing.TB, name, pkg, ldflags string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := builtAt[name]; ok {
		return p
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "deploytest-bin-")
		if err != nil {
			t.Fatalf("temp dir: %v", err)
		}
		binDir = d
	}
	out := filepath.Join(binDir, name)
	args := []string{"build", "-trimpath"}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	args = append(args, "-o", out, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s (CGO_ENABLED=0): %v\n%s", strings.Join(args, " "), err, b)
	}
	builtAt[name] = out
	return out
}

// binaryFor builds a binary the way its Dockerfile does.
func binaryFor(t testing.TB, name string) string {
	t.Helper()
	df, err := parseDockerfile(filepath.Join(deployDir(t), "docker", name+".Dockerfile"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	b, err := df.goBuild()
	if err != nil {
		t.Fatalf("%s.Dockerfile: %v", name, err)
	}
	return buildBinary(t, name, b.pkg, b.ldflags(testVersion))
}

// helpFlags runs bin with args (a -help invocation) and returns the flag
// names its Go flag package usage lists.
func helpFlags(t testing.TB, bin string, args ...string) (map[string]bool, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %s %v: %v", bin, args, err)
		}
	}
	re := regexp.MustCompile(`(?m)^\s+--?([a-zA-Z0-9][a-zA-Z0-9-]*)\b`)
	flags := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) == 0 {
		t.Fatalf("%s %v listed no flags:\n%s", bin, args, out.String())
	}
	return flags, out.String()
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	slices.Sort(k)
	return k
}
