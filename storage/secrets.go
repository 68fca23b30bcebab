package storage

import "fmt"

// Reseal opens sealed, a secret's stored value, and seals it again with
// sealer's current key, for drivers' ResealSecrets.
func Reseal(sealer Sealer, name string, sealed []byte) ([]byte, error) {
	v, err := sealer.Open(sealed, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("reseal secret %s: %w", name, err)
	}
	out, err := sealer.Seal(v, []byte(name))
	if err != nil {
		return nil, fmt.Errorf("reseal secret %s: %w", name, err)
	}
	return out, nil
}
