package keyspace

import (
	"crypto/sha256"
	"encoding/binary"
)

// Scoped returns a namespaced scheme for applications or tenants that share
// a database: the pair (namespace, h) where h is the first 4 bytes of the
// SHA-256 digest of the name's UTF-8 bytes, read as a little-endian int32 (the
// first integer of [Node]'s key). Give each application or tenant its own
// namespace and their locks can never collide with each other's, whatever
// their names; only names within one namespace can.
//
// Scoped is this package's own scheme, matching no other library. Its keys
// live in the pair space, alongside [Node], [NodeLegacy] and
// [WithAdvisoryLock] keys; any of those coincides with a given Scoped key
// only by chance (odds about 2⁻⁶⁴).
//
// Keys carry 32 bits of the name: even odds of some collision at about
// 77,000 names within one namespace.
func Scoped(namespace int32) Strategy {
	return Func(func(name string) Key {
		d := sha256.Sum256([]byte(name))
		return Pair(namespace, int32(binary.LittleEndian.Uint32(d[0:4])))
	})
}
