package policy

import "testing"

func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"git_status", "git_status", true},
		{"git_status", "git_statu", false},
		{"git_*", "git_push", true},
		{"git_*", "git_", true},
		{"git_*", "gitpush", false},
		{"*", "", true},
		{"*", "a/b", false},
		{"**", "a/b/c", true},
		{"*.github.com", "api.github.com", true},
		{"*.github.com", "a.b.github.com", true},
		{"*.github.com", "github.com", false},
		{"*.github.com", "evilgithub.com", false},
		{"/workspace/**", "/workspace/a/b.go", true},
		{"/workspace/**", "/workspace/", true},
		{"/workspace/**", "/workspace", true},
		{"/workspace/**", "/workspaces/x", false},
		{"/workspace/*", "/workspace/a", true},
		{"/workspace/*", "/workspace/a/b", false},
		{"**/.env", ".env", true},
		{"**/.env", "/app/.env", true},
		{"**/.env", "/app/x.env", false},
		{"**/.env", "/app/.env/x", false},
		{"/a/**/b", "/a/b", true},
		{"/a/**/b", "/a/x/y/b", true},
		{"/a/**/b", "/ab", false},
		{"/a/**/b", "/a/xb", false},
		{"a?c", "abc", true},
		{"a?c", "a/c", false},
		{"a[bc]d", "acd", true},
		{"a[bc]d", "aed", false},
		{"a[!bc]d", "aed", true},
		{"a[!bc]d", "a/d", false},
		{"a[a-z]", "am", true},
		{"a[a-z]", "aM", false},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{"*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"**x**y", "/p/x/q/y", true},
		{"claude-*", "claude-3-5-sonnet", true},
		{"gpt-4o*", "gpt-4", false},
	} {
		g, err := compileGlob(tc.pattern)
		if err != nil {
			t.Errorf("compile %q: %v", tc.pattern, err)
			continue
		}
		if got := g.match(tc.s); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func TestGlobErrors(t *testing.T) {
	long := make([]byte, maxGlobTokens+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, tc := range []struct{ pattern, want string }{
		{"", "empty pattern"},
		{"a***", `invalid pattern "a***": "***" is not a wildcard (use * or **)`},
		{"a[bc", `invalid pattern "a[bc": unterminated character class`},
		{"a[]", `invalid pattern "a[]": empty character class`},
		{"a[z-a]", `invalid pattern "a[z-a]": invalid range z-a in character class`},
		{"a]", `invalid pattern "a]": unmatched ']' (escape it as \])`},
		{`a\`, `invalid pattern "a\\": trailing backslash`},
		{string(long), `invalid pattern "` + string(long) + `": longer than 255 characters`},
	} {
		_, err := compileGlob(tc.pattern)
		if err == nil || err.Error() != tc.want {
			t.Errorf("compile %q: got %v, want %q", tc.pattern, err, tc.want)
		}
	}
}

func TestGlobMatchDoesNotAllocate(t *testing.T) {
	g, err := compileGlob("/workspace/**/*.go")
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { g.match("/workspace/a/b/c/main.go") }); n != 0 {
		t.Errorf("match allocates %.1f times", n)
	}
}
