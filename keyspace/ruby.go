package keyspace

import (
	"fmt"
	"hash/crc32"
	"os"
)

// withAdvisoryLockPrefixEnv is the variable the Ruby gem with_advisory_lock
// reads its lock prefix from.
const withAdvisoryLockPrefixEnv = "WITH_ADVISORY_LOCK_PREFIX"

// WithAdvisoryLock returns the PostgreSQL scheme of the Ruby gem
// with_advisory_lock (ClosureTree/with_advisory_lock: the same in the 5.x
// lib/with_advisory_lock/postgresql.rb and in the later rewrite,
// postgresql_advisory.rb with core_advisory.rb): the pair
//
//	(crc32(name) & 0x7fffffff, prefix & 0x7fffffff)
//
// where crc32 is zlib's CRC-32 (IEEE) of the name's bytes, as Ruby's
// Zlib.crc32(name.to_s) computes it, and prefix is the gem's lock prefix,
// which it reads from the environment variable WITH_ADVISORY_LOCK_PREFIX (0
// when unset; see [WithAdvisoryLockFromEnv]). The hash comes first and the
// prefix second. Masking to 31 bits mirrors the gem, so a negative prefix
// maps as Ruby maps it: WithAdvisoryLock(-1) uses 2147483647.
//
// The gem passes an Integer lock name through unhashed; to contend with
// with_advisory_lock(42), use the key [Pair](42, prefix) directly.
//
// Keys carry 31 bits of the name: even odds of some collision at about
// 55,000 names per prefix.
func WithAdvisoryLock(prefix int32) Strategy {
	p := int32(uint32(prefix) & 0x7fffffff)
	return Func(func(name string) Key {
		return Pair(int32(crc32.ChecksumIEEE([]byte(name))&0x7fffffff), p)
	})
}

// WithAdvisoryLockFromEnv returns [WithAdvisoryLock] with the prefix read
// from WITH_ADVISORY_LOCK_PREFIX now, as the gem reads it
// (ENV[...].to_i & 0x7fffffff): unset or empty means 0; leading whitespace,
// a sign, a "0d" prefix and single underscores between digits are accepted;
// values outside int32 keep their low 31 bits.
//
// Ruby's String#to_i never fails: it reads "12abc" as 12 and "abc" as 0.
// WithAdvisoryLockFromEnv instead returns an error wrapping [ErrSyntax]
// whenever Ruby's strict Integer(value, 10) would reject the value, since a
// prefix like that is almost always a mistake. To match such a deployment
// anyway, pass the number Ruby used to [WithAdvisoryLock].
//
// The variable is read on every call, never at package initialisation.
func WithAdvisoryLockFromEnv() (Strategy, error) {
	v, ok := os.LookupEnv(withAdvisoryLockPrefixEnv)
	if !ok || v == "" {
		return WithAdvisoryLock(0), nil
	}
	prefix, strict := rubyToI31(v)
	if !strict {
		return nil, fmt.Errorf("%w: %s=%q is not a decimal integer (Ruby's to_i would read it as %d)",
			ErrSyntax, withAdvisoryLockPrefixEnv, v, prefix)
	}
	return WithAdvisoryLock(prefix), nil
}

// rubyToI31 returns s.to_i & 0x7fffffff as Ruby computes it for a String in
// base 10, and whether Ruby's Integer(s, 10) would accept s (it raises where
// to_i silently stops). The result is in [0, 2³¹).
func rubyToI31(s string) (v int32, strict bool) {
	i := 0
	for i < len(s) && rubySpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if i+1 < len(s) && s[i] == '0' && (s[i+1] == 'd' || s[i+1] == 'D') {
		i += 2
	}
	// Digits, with single underscores between them. Only the value modulo
	// 2³¹ matters, and uint32 arithmetic keeps it exact.
	var acc uint32
	digits, underscore := 0, false
	for ; i < len(s); i++ {
		c := s[i]
		if '0' <= c && c <= '9' {
			acc = acc*10 + uint32(c-'0')
			digits++
			underscore = false
			continue
		}
		if c == '_' && digits > 0 && !underscore {
			underscore = true
			continue
		}
		break
	}
	if neg {
		acc = -acc
	}
	strict = digits > 0 && !underscore
	for ; i < len(s); i++ {
		if !rubySpace(s[i]) {
			strict = false
			break
		}
	}
	return int32(acc & 0x7fffffff), strict
}

// rubySpace reports whether Ruby's ISSPACE holds for c.
func rubySpace(c byte) bool { return c == ' ' || '\t' <= c && c <= '\r' }

// railsMigratorSalt is ActiveRecord::Migrator::MIGRATOR_SALT.
const railsMigratorSalt = 2053462845

// RailsMigrations is the lock Ruby on Rails takes around migrations
// (ActiveRecord 5.0 and later, Migrator#generate_migrator_advisory_lock_id
// in activerecord/lib/active_record/migration.rb): the lock name is the
// database name, as current_database returns it, and the key is
// 2053462845 × crc32(name) in the bigint space, crc32 being zlib's CRC-32
// (IEEE). The product never exceeds 2⁶³, so it needs no wrapping. Take it to
// keep other tools out of a database while Rails migrates it.
//
// Keys carry 32 bits of the name: even odds of some collision at about
// 77,000 database names.
var RailsMigrations Strategy = Func(railsMigrationsKey)

func railsMigrationsKey(database string) Key {
	return Int64(railsMigratorSalt * int64(crc32.ChecksumIEEE([]byte(database))))
}
