package auth

import (
	"crypto/x509"
	"strings"
)

// CertScheme is the URI SAN scheme of operator client certificates:
// aasm://role/<role>/<name>, e.g. aasm://role/operator/alice.
const CertScheme = "aasm"

// CertIdentity maps a verified client certificate to an operator identity:
// the first URI SAN of the form aasm://role/<role>/<name> gives the role
// and name. Agent certificates (spiffe://...) and certificates without such
// a SAN give none. The caller must pass only a certificate whose chain was
// verified against the configured client CA.
func CertIdentity(cert *x509.Certificate) (Identity, bool) {
	if cert == nil {
		return Identity{}, false
	}
	for _, u := range cert.URIs {
		if u.Scheme != CertScheme || u.Host != "role" {
			continue
		}
		roleName, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		if !ok || name == "" || strings.Contains(name, "/") {
			continue
		}
		role, err := ParseRole(roleName)
		if err != nil {
			continue
		}
		return Identity{Name: "cert:" + name, Role: role, Via: ViaClientCert}, true
	}
	return Identity{}, false
}
