package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	"github.com/agent-assembly/agent-assembly/alerts"
	v1 "github.com/agent-assembly/agent-assembly/api/agentassembly/v1"
	"github.com/agent-assembly/agent-assembly/gateway"
)

// validateAlerts checks the webhook URLs and that they come with a secret.
func (c *Config) validateAlerts() []error {
	var errs []error
	for _, u := range c.AlertWebhooks {
		if err := alerts.ValidateWebhookURL(u); err != nil {
			errs = append(errs, fmt.Errorf("--alert-webhook: %w", err))
		}
	}
	if len(c.AlertWebhooks) > 0 && c.AlertWebhookSecretFile == "" {
		errs = append(errs, errors.New("--alert-webhook-secret-file: is required with --alert-webhook: receivers verify the X-AA-Signature HMAC with it"))
	}
	return errs
}

// webhookSecret reads the HMAC secret: the file's content without
// surrounding white space, at least 16 bytes.
func webhookSecret(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read alert webhook secret: %w", err)
	}
	sec := []byte(strings.TrimSpace(string(b)))
	if len(sec) < 16 {
		return nil, fmt.Errorf("alert webhook secret %s: want at least 16 bytes, found %d", path, len(sec))
	}
	return sec, nil
}

// buildAlerts starts the alert engine over the store and hooks the decision
// core to it (alerts) and to the store's cost ledger (costs).
func (s *Server) buildAlerts() error {
	sec, err := webhookSecret(s.cfg.AlertWebhookSecretFile)
	if err != nil {
		return err
	}
	var hooks []alerts.Webhook
	for _, u := range s.cfg.AlertWebhooks {
		hooks = append(hooks, alerts.Webhook{URL: u, Secret: sec})
	}
	eng, err := alerts.New(alerts.Options{Store: s.store, Logger: s.log, Registerer: s.reg, Webhooks: hooks})
	if err != nil {
		return fmt.Errorf("start alerts: %w", err)
	}
	s.alerts = eng
	s.core.SetAlerts(eng, s.store)
	return nil
}

// Alerts returns the alert engine (for tests and in-process adapters).
func (s *Server) Alerts() *alerts.Engine { return s.alerts }

func (s *Server) registerAlertServices() {
	v1.RegisterAlertServiceServer(s.grpc, gateway.NewAlertService(s.store, s.alerts, s.core))
	v1.RegisterCostServiceServer(s.grpc, gateway.NewCostService(s.store))
}

func (s *Server) registerAlertREST(ctx context.Context, gw *runtime.ServeMux) error {
	if err := v1.RegisterAlertServiceHandlerServer(ctx, gw, gateway.NewAlertService(s.store, s.alerts, s.core)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	if err := v1.RegisterCostServiceHandlerServer(ctx, gw, gateway.NewCostService(s.store)); err != nil {
		return fmt.Errorf("register REST handlers: %w", err)
	}
	return nil
}

// closeAlerts stops taking alerts and flushes the queued ones and their
// webhook deliveries until ctx ends.
func (s *Server) closeAlerts(ctx context.Context) error {
	if s.alerts == nil {
		return nil
	}
	s.core.SetAlerts(nil, nil)
	return s.alerts.Close(ctx)
}
