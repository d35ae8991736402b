package keyspace

import (
	"crypto/fips140"
	"crypto/sha1"
	"encoding/binary"
	"hash/crc32"
)

// DjangoPGLock is the scheme of the Python package django-pglock
// (Opus10/django-pglock, pglock/core.py, _cast_lock_id, 1.x): the first 8
// bytes of the SHA-256 digest of the name's UTF-8 bytes, read as a
// little-endian signed int64, in the bigint space. It is the same function
// as [SHA256Int64]. pglock.advisory_id("hello") is (245608543, 3125670444)
// in django-pglock's tests: the key int64(1054880662928880172).
//
// Keys are 64 bits: even odds of some collision at about 5 billion names.
var DjangoPGLock Strategy = Func(sha256Int64Key)

// Pals returns the scheme of the Python package pals (level12/pals,
// pals/core.py, Locker._lock_num) for a Locker created with app_name app:
// the SHA-1 digest of the UTF-8 bytes of app + "." + name, whose first 8
// bytes are read as a signed int64 by struct.unpack('q', …), in the bigint
// space. 'q' uses the host's byte order; Pals reads little-endian, which
// matches pals on x86-64 and arm64 hosts (a big-endian host such as s390x
// gives other keys).
//
// A Locker whose app_name is None hashes the bare name, which Pals does not
// cover: app "" hashes "." + name, as Locker("") does.
//
// SHA-1 is not allowed under GODEBUG=fips140=only; there the strategy
// returns the zero Key for every name, which sqllock reports as an error,
// rather than panicking.
//
// Keys are 64 bits: even odds of some collision at about 5 billion names
// per app.
func Pals(app string) Strategy {
	prefix := app + "."
	return Func(func(name string) Key {
		if fips140.Enforced() {
			return Key{}
		}
		d := sha1.Sum([]byte(prefix + name))
		return Int64(int64(binary.LittleEndian.Uint64(d[:8])))
	})
}

// DjangoPGLocks is the scheme of the Python package django-pglocks
// (Xof/django-pglocks 1.0.4, django_pglocks/__init__.py, advisory_lock; not
// [DjangoPGLock]): zlib's CRC-32 of the name's UTF-8 bytes, read as a signed
// int32, locked as one bigint with pg_advisory_lock(bigint). A name whose
// CRC-32 has its top bit set gets a negative key: "dbmigration" (CRC-32
// 2072846711) is int64(2072846711), "myapp_production" (CRC-32 4174588435)
// is int64(-120378861). Tuple and integer lock ids are not hashed: lock them
// with [Pair] and [Int64].
//
// Keys carry 32 bits of the name: even odds of some collision at about
// 77,000 names.
var DjangoPGLocks Strategy = Func(djangoPGLocksKey)

func djangoPGLocksKey(name string) Key {
	return Int64(int64(int32(crc32.ChecksumIEEE([]byte(name)))))
}
