// Package identity issues and verifies the credential tokens agents receive
// at registration, and keeps the gateway's token-signing key.
//
// A token is "aa1.<claims>.<signature>": the claims (token id, agent,
// issue and expiry times) as base64url JSON, signed with the gateway's
// Ed25519 key, which every replica shares through the store's encrypted
// secrets. Revocation is by token id (storage.AgentRegistry.RevokeCredential).
package identity
