package keyspace

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Space is one of PostgreSQL's two disjoint advisory-lock key spaces.
type Space uint8

const (
	// SpaceInt64 is the bigint space of pg_advisory_lock(bigint).
	SpaceInt64 Space = iota + 1
	// SpacePair is the (int, int) space of pg_advisory_lock(int, int).
	SpacePair
)

// String returns "int64" or "pair".
func (s Space) String() string {
	switch s {
	case SpaceInt64:
		return "int64"
	case SpacePair:
		return "pair"
	}
	return "invalid"
}

// Key is one advisory-lock key together with its key space. Keys are
// comparable values and may be used as map keys. The zero Key is invalid:
// [Key.Valid] reports false and sqllock refuses to lock it.
type Key struct {
	space Space
	v     int64 // the bigint, or a<<32 | uint32(b) for a pair
}

// Int64 returns the key n in the bigint space.
func Int64(n int64) Key { return Key{space: SpaceInt64, v: n} }

// Pair returns the key (a, b) in the (int, int) space.
func Pair(a, b int32) Key {
	return Key{space: SpacePair, v: int64(a)<<32 | int64(uint32(b))}
}

// Space reports the key's space; it is 0 for the zero Key.
func (k Key) Space() Space { return k.space }

// Valid reports whether k was built by [Int64] or [Pair].
func (k Key) Valid() bool { return k.space == SpaceInt64 || k.space == SpacePair }

// Int64 returns the bigint of a key in [SpaceInt64]; ok is false otherwise.
func (k Key) Int64() (n int64, ok bool) { return k.v, k.space == SpaceInt64 }

// Pair returns the two integers of a key in [SpacePair]; ok is false otherwise.
func (k Key) Pair() (a, b int32, ok bool) {
	return int32(k.v >> 32), int32(uint32(k.v)), k.space == SpacePair
}

// String shows the space and the numbers, as "int64(42)" or "pair(1,-2)".
// [Parse] reads it back.
func (k Key) String() string {
	switch k.space {
	case SpaceInt64:
		return "int64(" + strconv.FormatInt(k.v, 10) + ")"
	case SpacePair:
		a, b, _ := k.Pair()
		return "pair(" + strconv.FormatInt(int64(a), 10) + "," + strconv.FormatInt(int64(b), 10) + ")"
	}
	return "invalid"
}

// LockTag returns the key as PostgreSQL shows it in the pg_locks view:
// the classid, objid and objsubid columns of a row with locktype 'advisory'.
// A bigint key shows its high and low 32 bits with objsubid 1; a pair shows
// its two integers reinterpreted as unsigned with objsubid 2.
func (k Key) LockTag() (classid, objid uint32, objsubid int16) {
	switch k.space {
	case SpaceInt64:
		return uint32(uint64(k.v) >> 32), uint32(k.v), 1
	case SpacePair:
		return uint32(uint64(k.v) >> 32), uint32(k.v), 2
	}
	return 0, 0, 0
}

// FromLockTag is the inverse of [Key.LockTag]: it decodes the classid, objid
// and objsubid columns of an advisory row of pg_locks.
func FromLockTag(classid, objid uint32, objsubid int16) (Key, error) {
	v := int64(uint64(classid)<<32 | uint64(objid))
	switch objsubid {
	case 1:
		return Key{space: SpaceInt64, v: v}, nil
	case 2:
		return Key{space: SpacePair, v: v}, nil
	}
	return Key{}, fmt.Errorf("keyspace: objsubid %d is not an advisory-lock key space (want 1 or 2)", objsubid)
}

// ErrSyntax reports a key or name that does not parse.
var ErrSyntax = errors.New("keyspace: invalid syntax")

// Parse reads a key written as [Key.String] writes it ("int64(42)",
// "pair(1,-2)"), or in the short forms "42" (bigint) and "1,-2" (pair).
// Errors wrap [ErrSyntax].
func Parse(s string) (Key, error) {
	body := s
	switch {
	case strings.HasPrefix(s, "int64(") && strings.HasSuffix(s, ")"):
		body = s[len("int64(") : len(s)-1]
		if strings.Contains(body, ",") {
			return Key{}, fmt.Errorf("%w: %q: an int64 key has one number", ErrSyntax, s)
		}
	case strings.HasPrefix(s, "pair(") && strings.HasSuffix(s, ")"):
		body = s[len("pair(") : len(s)-1]
		if !strings.Contains(body, ",") {
			return Key{}, fmt.Errorf("%w: %q: a pair key has two numbers", ErrSyntax, s)
		}
	}
	if a, b, ok := strings.Cut(body, ","); ok {
		x, err1 := strconv.ParseInt(strings.TrimSpace(a), 10, 32)
		y, err2 := strconv.ParseInt(strings.TrimSpace(b), 10, 32)
		if err1 != nil || err2 != nil {
			return Key{}, fmt.Errorf("%w: %q: want two decimal int32, as in \"1,-2\"", ErrSyntax, s)
		}
		return Pair(int32(x), int32(y)), nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(body), 10, 64)
	if err != nil {
		return Key{}, fmt.Errorf("%w: %q: want a decimal int64, as in \"42\"", ErrSyntax, s)
	}
	return Int64(n), nil
}
