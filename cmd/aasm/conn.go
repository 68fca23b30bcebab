package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/agent-assembly/agent-assembly/auth"
)

// connFlags are the flags that say how to reach and authenticate to the
// gateway.
type connFlags struct {
	apiKey     string
	apiKeyFile string
	caFile     string
	skipVerify bool
	clientCert string
	clientKey  string
}

// addConnFlags registers the connection flags on the root command.
func addConnFlags(root *cobra.Command, c *connFlags) {
	f := root.PersistentFlags()
	f.StringVar(&c.apiKey, "api-key", "", "operator API key to present (prefer $AA_API_KEY, --api-key-file or aasm login: a flag shows in the process list)")
	f.StringVar(&c.apiKeyFile, "api-key-file", "", "file holding the operator API key (env AA_API_KEY_FILE), e.g. a mounted Secret or the gateway's ./data/admin.key")
	f.StringVar(&c.caFile, "ca-file", "", "PEM CA bundle to verify the gateway's TLS certificate (turns TLS on; env AA_CA_FILE)")
	f.BoolVar(&c.skipVerify, "insecure-skip-tls-verify", false, "use TLS but do not verify the gateway's certificate (testing only)")
	f.StringVar(&c.clientCert, "client-cert", "", "PEM client certificate for mutual TLS (an operator certificate: URI SAN aasm://role/<role>/<name>)")
	f.StringVar(&c.clientKey, "client-key", "", "PEM private key of --client-cert")
}

// apiKey returns the key to present: --api-key, else --api-key-file, else
// $AA_API_KEY, else $AA_API_KEY_FILE, else the key saved by aasm login for
// this very address (never another gateway's).
func (g *globals) apiKey() (string, error) {
	key := g.conn.apiKey
	file := g.conn.apiKeyFile
	if key == "" && file == "" {
		key = os.Getenv("AA_API_KEY")
		if key == "" {
			file = os.Getenv("AA_API_KEY_FILE")
		}
	}
	if key == "" && file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read the API key file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	if key == "" {
		if cfg, _, ok, err := loadLoginConfig(); err == nil && ok && cfg.Addr == g.addr {
			key = cfg.Key
		}
	}
	if key == "" {
		return "", nil
	}
	if _, err := auth.ParseKey(key); err != nil {
		return "", fmt.Errorf("the API key (from --api-key, $AA_API_KEY or aasm login) is not one: %w", err)
	}
	return key, nil
}

// target splits an address into the gRPC target and whether TLS is asked
// for by its scheme: https://host:port means TLS, http://host:port and
// host:port plaintext unless a TLS flag (or the saved login) says
// otherwise.
func (g *globals) target() (string, bool) {
	addr := g.addr
	if rest, ok := strings.CutPrefix(addr, "https://"); ok {
		return strings.TrimSuffix(rest, "/"), true
	}
	if rest, ok := strings.CutPrefix(addr, "http://"); ok {
		return strings.TrimSuffix(rest, "/"), false
	}
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix:" + trimSlashes(rest), false
	}
	return addr, false
}

// transport returns the transport credentials: TLS when the address or a
// flag asks for it, plaintext otherwise.
func (g *globals) transport(useTLS bool) (credentials.TransportCredentials, error) {
	c := g.conn
	caFile := c.caFile
	if caFile == "" {
		caFile = os.Getenv("AA_CA_FILE")
	}
	if cfg, _, ok, err := loadLoginConfig(); err == nil && ok && cfg.Addr == g.addr {
		if caFile == "" {
			caFile = cfg.CAFile
		}
		useTLS = useTLS || cfg.TLS
	}
	if !useTLS && caFile == "" && !c.skipVerify && c.clientCert == "" {
		return insecure.NewCredentials(), nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.skipVerify} //nolint:gosec // asked for by --insecure-skip-tls-verify
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file: %s holds no PEM certificate", caFile)
		}
	}
	if (c.clientCert == "") != (c.clientKey == "") {
		return nil, errors.New("--client-cert and --client-key: give both or neither")
	}
	if c.clientCert != "" {
		kp, err := tls.LoadX509KeyPair(c.clientCert, c.clientKey)
		if err != nil {
			return nil, fmt.Errorf("--client-cert/--client-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	return credentials.NewTLS(tc), nil
}

// dialGateway connects to the gateway with the transport and API key the
// flags, environment and saved login give. gRPC connects lazily, so
// errors surface on the first call and are explained by describe.
func (g *globals) dialGateway() (*grpc.ClientConn, error) {
	target, useTLS := g.target()
	creds, err := g.transport(useTLS)
	if err != nil {
		return nil, err
	}
	key, err := g.apiKey()
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerKey(key)))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", g.addr, err)
	}
	return conn, nil
}

// bearerKey sends an API key as "authorization: Bearer <key>" metadata. It
// is allowed over plaintext because the gateway only serves plaintext on
// loopback (or with --allow-remote, the operator's choice).
type bearerKey string

func (b bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerKey) RequireTransportSecurity() bool { return false }
