package keyspace

import (
	"crypto/sha256"
	"encoding/binary"
)

// Strategy turns a lock name into a [Key]. Implementations must be pure:
// the same name always yields the same key, and Key must be safe for
// concurrent use. A name the strategy cannot map yields the zero Key, which
// sqllock reports as an error naming the lock.
type Strategy interface {
	Key(name string) Key
}

// Func adapts an ordinary function to a [Strategy].
type Func func(name string) Key

// Key returns f(name).
func (f Func) Key(name string) Key { return f(name) }

// Default is the strategy sqllock uses when none is given: [Node], so Go and
// Node processes using advisory-lock contend for the same names.
var Default Strategy = Node

// Node is the scheme of the Node package advisory-lock v1.1.1 and later:
// the SHA-256 digest of the name's UTF-8 bytes (no normalisation), digest
// bytes 0–3 and 4–7 each read as a little-endian signed int32, used as a
// [Pair].
//
// Keys are 64 bits: even odds of some collision at about 5 billion names.
var Node Strategy = Func(nodeKey)

// NodeLegacy is the scheme of advisory-lock up to v1.1.0: like [Node], but
// the second integer comes from digest bytes 1–4 (an off-by-one in those
// versions). Use it only to contend with deployments of those versions.
//
// The two integers share digest bytes 1–3, so keys carry only 40 bits: even
// odds of some collision at about 1.2 million names.
var NodeLegacy Strategy = Func(nodeLegacyKey)

// SHA256Int64 hashes into the bigint space: the first 8 bytes of the
// SHA-256 digest of the name, read as a little-endian int64. It matches
// django-pglock; see [DjangoPGLock].
//
// Keys are 64 bits: even odds of some collision at about 5 billion names.
var SHA256Int64 Strategy = Func(sha256Int64Key)

func nodeKey(name string) Key {
	d := sha256.Sum256([]byte(name))
	return Pair(int32(binary.LittleEndian.Uint32(d[0:4])), int32(binary.LittleEndian.Uint32(d[4:8])))
}

func nodeLegacyKey(name string) Key {
	d := sha256.Sum256([]byte(name))
	return Pair(int32(binary.LittleEndian.Uint32(d[0:4])), int32(binary.LittleEndian.Uint32(d[1:5])))
}

func sha256Int64Key(name string) Key {
	d := sha256.Sum256([]byte(name))
	return Int64(int64(binary.LittleEndian.Uint64(d[0:8])))
}
