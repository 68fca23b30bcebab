package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Fingerprint returns the hex SHA-256 of the documents' canonical content:
// documents sorted by name, mapping keys sorted, scalars with their resolved
// tags, and comments, formatting and file names ignored. Equal policy sets
// have equal fingerprints, so the gateway can use it (or a prefix of it) as
// the policy version.
func Fingerprint(docs []*Document) string {
	sorted := slices.Clone(docs)
	slices.SortFunc(sorted, func(a, b *Document) int { return cmp.Compare(a.Metadata.Name, b.Metadata.Name) })
	h := sha256.New()
	var buf []byte
	for _, d := range sorted {
		if d == nil || d.root == nil {
			continue
		}
		buf = canonical(buf[:0], d.root)
		buf = append(buf, '\n')
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func canonical(b []byte, n *yaml.Node) []byte {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			b = canonical(b, c)
		}
	case yaml.MappingNode:
		type kv struct{ k, v *yaml.Node }
		pairs := make([]kv, 0, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			pairs = append(pairs, kv{n.Content[i], n.Content[i+1]})
		}
		slices.SortStableFunc(pairs, func(a, b kv) int { return cmp.Compare(a.k.Value, b.k.Value) })
		b = append(b, '{')
		for i, p := range pairs {
			if i > 0 {
				b = append(b, ',')
			}
			b = canonical(b, p.k)
			b = append(b, ':')
			b = canonical(b, p.v)
		}
		b = append(b, '}')
	case yaml.SequenceNode:
		b = append(b, '[')
		for i, c := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			b = canonical(b, c)
		}
		b = append(b, ']')
	default:
		b = append(b, n.ShortTag()...)
		b = strconv.AppendQuote(b, n.Value)
	}
	return b
}

// VersionLength is the number of hex digits of the fingerprint used as a
// policy version.
const VersionLength = 12

// Version is the policy version of a document set: the first VersionLength
// hex digits of Fingerprint, short enough to read in logs and answers.
func Version(docs []*Document) string {
	return Fingerprint(docs)[:VersionLength]
}
