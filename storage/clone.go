package storage

import (
	"bytes"
	"maps"
)

// Clone returns a deep copy of r. Drivers that keep records in memory hand
// out clones, so callers own what they receive.
func (r *AuditRecord) Clone() *AuditRecord {
	c := *r
	c.Payload = bytes.Clone(r.Payload)
	c.PrevHash = bytes.Clone(r.PrevHash)
	c.Hash = bytes.Clone(r.Hash)
	c.Seal = nil // linked already: the copy is for reading
	return &c
}

// Clone returns a deep copy of a.
func (a *Agent) Clone() *Agent {
	c := *a
	c.Labels = maps.Clone(a.Labels)
	c.PublicKey = bytes.Clone(a.PublicKey)
	return &c
}

// Clone returns a deep copy of v.
func (v *PolicyVersion) Clone() *PolicyVersion {
	c := *v
	c.Documents = make([]PolicyDocument, len(v.Documents))
	for i, d := range v.Documents {
		c.Documents[i] = PolicyDocument{Name: d.Name, Source: bytes.Clone(d.Source)}
	}
	return &c
}

// Clone returns a deep copy of a.
func (a *Approval) Clone() *Approval {
	c := *a
	c.Payload = bytes.Clone(a.Payload)
	return &c
}
