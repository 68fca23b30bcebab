package secretbox

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func mustKey(t *testing.T) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	b, err := New(mustKey(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range [][]byte{nil, []byte("sk-live-123"), bytes.Repeat([]byte{0}, 4096)} {
		sealed, err := b.Seal(pt, []byte("openai"))
		if err != nil {
			t.Fatal(err)
		}
		if len(pt) > 4 && bytes.Contains(sealed, pt) {
			t.Fatal("sealed value contains the plaintext")
		}
		got, err := b.Open(sealed, []byte("openai"))
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, %v; want %q", got, err, pt)
		}
		if _, err := b.Open(sealed, []byte("github")); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("Open with another name: %v, want ErrDecrypt", err)
		}
		c := bytes.Clone(sealed)
		c[len(c)-1] ^= 1
		if _, err := b.Open(c, []byte("openai")); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("Open of a corrupted value: %v, want ErrDecrypt", err)
		}
	}
	a, _ := b.Seal([]byte("x"), nil)
	c, _ := b.Seal([]byte("x"), nil)
	if bytes.Equal(a, c) {
		t.Fatal("two seals of one value are equal: nonces repeat")
	}
	if _, err := b.Open([]byte{1, 2}, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Open(short) = %v", err)
	}
}

func TestRotation(t *testing.T) {
	oldKey, newKey := mustKey(t), mustKey(t)
	oldBox, _ := New(oldKey)
	sealed, _ := oldBox.Seal([]byte("v"), []byte("n"))
	newBox, _ := New(newKey, oldKey)
	if got, err := newBox.Open(sealed, []byte("n")); err != nil || string(got) != "v" {
		t.Fatalf("Open with a retired key = %q, %v", got, err)
	}
	if !newBox.NeedsReseal(sealed) {
		t.Fatal("a value sealed with a retired key does not need resealing")
	}
	onlyNew, _ := New(newKey)
	_, err := onlyNew.Open(sealed, []byte("n"))
	if !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("Open without the old key = %v", err)
	}
}

func TestParseKey(t *testing.T) {
	k := mustKey(t)
	for _, s := range []string{hex.EncodeToString(k[:]), base64.StdEncoding.EncodeToString(k[:]), base64.RawURLEncoding.EncodeToString(k[:]), " " + EncodeKey(k) + "\n"} {
		got, err := ParseKey(s)
		if err != nil || got != k {
			t.Fatalf("ParseKey(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "short", base64.StdEncoding.EncodeToString(k[:16]), strings.Repeat("zz", 32)} {
		if _, err := ParseKey(s); err == nil {
			t.Fatalf("ParseKey(%q) accepted a bad key", s)
		}
	}
	if s := fmt.Sprintf("%v %s %#v", k, k, k); strings.Contains(s, EncodeKey(k)) || strings.Contains(s, hex.EncodeToString(k[:4])) {
		t.Fatalf("formatting a key prints it: %s", s)
	}
}

func TestLoadOrCreateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "secret.key")
	var wg sync.WaitGroup
	keys := make([]Key, 8)
	errs := make([]error, 8)
	for i := range keys {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateKeyFile(path) })
	}
	wg.Wait()
	for i := range keys {
		if errs[i] != nil || keys[i] != keys[0] {
			t.Fatalf("concurrent first starts disagree: %v", errs[i])
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateKeyFile(path)
	if err != nil || again != keys[0] {
		t.Fatalf("second start read another key: %v", err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKeyFile(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("a corrupt key file: %v, want an error naming the file", err)
	}
}

func BenchmarkSeal(b *testing.B) {
	k, _ := GenerateKey()
	box, _ := New(k)
	pt := []byte("sk-live-0123456789abcdef0123456789abcdef")
	b.ReportAllocs()
	for b.Loop() {
		_, _ = box.Seal(pt, []byte("openai"))
	}
}
