package keyspace

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
)

// sqlxInfo is the HKDF info string of sqlx's PgAdvisoryLock::new. sqlx's
// source says: "Do *not* change this string as it will affect the output!"
const sqlxInfo = "SQLx (Rust) Postgres advisory lock"

// SQLx is the scheme of the Rust crate sqlx, PgAdvisoryLock::new (sqlx 0.6
// and later, sqlx-postgres/src/advisory_lock.rs): HKDF-SHA256 (RFC 5869)
// with no salt, the name's UTF-8 bytes as input keying material and the info
// string "SQLx (Rust) Postgres advisory lock", expanded to 8 bytes and read
// as a little-endian int64, in the bigint space. The name
// "my first Postgres advisory lock!" gives int64(-5560419505042474287), the
// value sqlx's documentation asserts.
//
// Keys are 64 bits: even odds of some collision at about 5 billion names.
//
// SQLx computes HKDF with [crypto/hmac] directly rather than
// [crypto/hkdf.Key], which refuses input keys shorter than 112 bits under
// GODEBUG=fips140=only; the result is the same for every name.
var SQLx Strategy = Func(sqlxKey)

func sqlxKey(name string) Key {
	// HKDF-Extract: PRK = HMAC-SHA256(salt, IKM). An absent salt is HashLen
	// zero bytes (RFC 5869 §2.2), as in the hkdf crate's Hkdf::new(None, …).
	var salt [sha256.Size]byte
	extract := hmac.New(sha256.New, salt[:])
	extract.Write([]byte(name))
	prk := extract.Sum(nil)

	// HKDF-Expand to 8 bytes needs only T(1) = HMAC-SHA256(PRK, info || 0x01).
	expand := hmac.New(sha256.New, prk)
	expand.Write([]byte(sqlxInfo))
	expand.Write([]byte{1})
	okm := expand.Sum(nil)
	return Int64(int64(binary.LittleEndian.Uint64(okm[:8])))
}
