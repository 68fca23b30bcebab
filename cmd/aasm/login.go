package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/auth"
)

// loginConfig is what aasm login saves: the gateway to talk to, how (TLS,
// the CA that signs its certificate) and the operator API key to present.
// The key is sent only to this address.
type loginConfig struct {
	Addr    string    `yaml:"addr"`
	Key     string    `yaml:"key,omitempty"`
	TLS     bool      `yaml:"tls,omitempty"`
	CAFile  string    `yaml:"ca_file,omitempty"`
	SavedAt time.Time `yaml:"saved_at"`
}

// configPath is $XDG_CONFIG_HOME/agent-assembly/config.yaml, else
// ~/.config/agent-assembly/config.yaml.
func configPath() (string, error) {
	if dir := os.Getenv("XDG_CONFIG_HOME"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, "agent-assembly", "config.yaml"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the config directory: %w (set HOME or XDG_CONFIG_HOME)", err)
	}
	return filepath.Join(home, ".config", "agent-assembly", "config.yaml"), nil
}

// loadLoginConfig reads the saved login; ok is false when there is none.
func loadLoginConfig() (cfg loginConfig, path string, ok bool, err error) {
	path, err = configPath()
	if err != nil {
		return cfg, "", false, err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, path, false, nil
	}
	if err != nil {
		return cfg, path, false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		return cfg, path, false, fmt.Errorf("read %s: %w (run aasm login again, or delete the file)", path, err)
	}
	if cfg.Addr == "" {
		return cfg, path, false, fmt.Errorf("read %s: no addr (run aasm login again, or delete the file)", path)
	}
	return cfg, path, true, nil
}

// saveLoginConfig writes cfg to path with mode 0600 in a 0700 directory,
// replacing any previous file atomically.
func saveLoginConfig(path string, cfg loginConfig) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create config directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict config directory: %w", err)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".config-*.yaml")
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write config: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// defaultAddr is the --addr default: $AA_ADDR, else the saved login, else
// the local gateway. A broken config file is reported in warn, not fatal:
// --addr may still name a gateway.
func defaultAddr() (addr, warn string) {
	if a := os.Getenv("AA_ADDR"); a != "" {
		return a, ""
	}
	cfg, _, ok, err := loadLoginConfig()
	if err != nil {
		return "127.0.0.1:50051", "ignoring the saved login: " + err.Error()
	}
	if ok {
		return cfg.Addr, ""
	}
	return "127.0.0.1:50051", ""
}

// readKey reads the API key from file ("-" is stdin), or from stdin when
// it is piped and no file is given. An empty key means none.
func readKey(file string, stdin io.Reader) (string, error) {
	var r io.Reader
	switch {
	case file == "-":
		r = stdin
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return "", fmt.Errorf("read key file: %w", err)
		}
		defer f.Close()
		r = f
	default:
		if f, ok := stdin.(*os.File); ok {
			fi, err := f.Stat()
			if err != nil || fi.Mode()&os.ModeCharDevice != 0 {
				return "", nil // a terminal or /dev/null: no key piped
			}
		}
		r = stdin
	}
	b, err := io.ReadAll(io.LimitReader(r, 4097))
	if err != nil {
		return "", fmt.Errorf("read key: %w", err)
	}
	if len(b) > 4096 {
		return "", errors.New("read key: longer than 4096 bytes; pass the API key itself")
	}
	key := strings.TrimSpace(string(b))
	if strings.ContainsAny(key, " \t\r\n") {
		return "", errors.New("read key: the key must be one word on one line")
	}
	return key, nil
}

func newLoginCmd(g *globals) *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Save the gateway address (and an API key) for later commands",
		Long: `login checks that the gateway at --addr accepts the operator API key, then
saves the address, the key and the TLS settings to
$XDG_CONFIG_HOME/agent-assembly/config.yaml (or
~/.config/agent-assembly/config.yaml), readable by you only (mode 0600).
Later commands use the saved address when neither --addr nor $AA_ADDR is set,
and present the saved key to that address only (--api-key and $AA_API_KEY
take precedence).

The key (aak_<id>_<secret>) is read from --key-file, or from stdin when it is
piped. On a fresh gateway use the bootstrap admin key it printed once and
wrote to ./data/admin.key; then create named keys with aasm admin key create.
An address https://host:port, --ca-file or --insecure-skip-tls-verify turns
TLS on, and is remembered.

Exit status: 0 saved, 3 error (nothing saved).`,
		Example: `  aasm login --key-file ./data/admin.key
  aasm login --addr https://gw.internal:50051 --ca-file ca.pem --key-file ~/.aa-key
  pass show aa/key | aasm login --addr gw.internal:50051`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("addr") && os.Getenv("AA_ADDR") == "" && keyFile == "" {
				return errors.New("login needs the gateway address or a key: aasm login --addr HOST:PORT --key-file FILE")
			}
			key, err := readKey(keyFile, cmd.InOrStdin())
			if err != nil {
				return err
			}
			if key != "" {
				if _, err := auth.ParseKey(key); err != nil {
					return fmt.Errorf("read key: %w; nothing saved", err)
				}
				g.conn.apiKey = key // check this key, not a saved one
			}
			_, useTLS := g.target()
			caFile := g.conn.caFile
			if caFile != "" {
				if caFile, err = filepath.Abs(caFile); err != nil {
					return fmt.Errorf("--ca-file: %w", err)
				}
			}
			useTLS = useTLS || caFile != "" || g.conn.skipVerify
			path, err := configPath()
			if err != nil {
				return err
			}
			var st *v1.GatewayStatus
			err = g.call(cmd.Context(), func(ctx context.Context, c clients) error {
				st, err = c.admin.GetStatus(ctx, &v1.GetStatusRequest{})
				return err
			})
			if err != nil {
				return fmt.Errorf("%s\n  nothing saved", describe(err, g.addr))
			}
			if err := saveLoginConfig(path, loginConfig{Addr: g.addr, Key: key, TLS: useTLS, CAFile: caFile, SavedAt: time.Now().UTC()}); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "Logged in to %s (gateway %s, replica %s).\nSaved to %s", g.addr, st.GetVersion(), st.GetReplicaId(), path)
			if key == "" {
				fmt.Fprint(g.out, " without an API key")
			}
			fmt.Fprintln(g.out, ".")
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", "", `file holding the operator API key ("-" for stdin)`)
	return cmd
}

func newLogoutCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "logout",
		Short:   "Forget the saved gateway address and API key",
		Long:    "logout deletes the config file aasm login wrote. It succeeds when there is none.",
		Example: "  aasm logout",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := configPath()
			if err != nil {
				return err
			}
			switch err := os.Remove(path); {
			case errors.Is(err, os.ErrNotExist):
				fmt.Fprintf(g.out, "Not logged in (no %s).\n", path)
			case err != nil:
				return fmt.Errorf("remove %s: %w", path, err)
			default:
				fmt.Fprintf(g.out, "Logged out: removed %s.\n", path)
			}
			return nil
		},
	}
}
