package keyspace_test

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"hash/crc64"
	"math"
	"os"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// TestPublishedVectors checks each scheme against the keys its own library
// publishes (documentation, tests or constants) or that the library's own
// expression computes. docs/keyspace.md lists the sources.
func TestPublishedVectors(t *testing.T) {
	tests := []struct {
		from     string // where the vector comes from
		strategy keyspace.Strategy
		name     string
		want     keyspace.Key
	}{
		// sqlx-postgres/src/advisory_lock.rs, the doc test of PgAdvisoryLock::new.
		{"sqlx docs", keyspace.SQLx, "my first Postgres advisory lock!", keyspace.Int64(-5560419505042474287)},
		// HKDF computed independently with CPython's hmac module.
		{"sqlx via CPython hmac", keyspace.SQLx, "", keyspace.Int64(8559922135585776354)},
		{"sqlx via CPython hmac", keyspace.SQLx, "日本語", keyspace.Int64(7559688324711292789)},

		// pglock/tests/test_core.py: advisory_id("hello") == (245608543, 3125670444).
		{"django-pglock tests", keyspace.DjangoPGLock, "hello", keyspace.Int64(245608543<<32 | 3125670444)},

		// database/util_test.go, TestGenerateAdvisoryLockId, v4.20.1.
		{"golang-migrate tests", keyspace.GolangMigrate(), "database_name", keyspace.Int64(1764327054)},
		{"golang-migrate tests", keyspace.GolangMigrate("schema_name_1"), "database_name", keyspace.Int64(2453313553)},
		{"golang-migrate tests", keyspace.GolangMigrate("schema_name_2"), "database_name", keyspace.Int64(235207038)},
		{"golang-migrate tests", keyspace.GolangMigrate("schema_name_1", "schema_name_2"), "database_name", keyspace.Int64(3743845847)},
		// The postgres driver's default table: GenerateAdvisoryLockId of
		// v4.20.1, called in Go (and proven live in interop/).
		{"golang-migrate v4.20.1", keyspace.GolangMigrate("public", "schema_migrations"), "myapp_production", keyspace.Int64(2363960938)},
		{"golang-migrate v4.20.1", keyspace.GolangMigrate("public", "schema_migrations"), "dbmigration", keyspace.Int64(2243019527)},
		// Opened from a URL, the database name is the URL's path, "/db".
		{"golang-migrate v4.20.1", keyspace.GolangMigrateURL("public", "schema_migrations"), "myapp_production", keyspace.Int64(3684552294)},
		{"golang-migrate v4.20.1", keyspace.GolangMigrateURL("public", "schema_migrations"), "dbmigration", keyspace.Int64(1959751763)},
		{"golang-migrate v4.20.1", keyspace.GolangMigrateURL(), "database_name", keyspace.GolangMigrate().Key("/database_name")},

		// django_pglocks/__init__.py 1.0.4, advisory_lock's conversion run
		// in CPython: top bit clear, then set.
		{"django-pglocks via CPython", keyspace.DjangoPGLocks, "dbmigration", keyspace.Int64(2072846711)},
		{"django-pglocks via CPython", keyspace.DjangoPGLocks, "hello", keyspace.Int64(907060870)},
		{"django-pglocks via CPython", keyspace.DjangoPGLocks, "", keyspace.Int64(0)},
		{"django-pglocks via CPython", keyspace.DjangoPGLocks, "myapp_production", keyspace.Int64(-120378861)},
		{"django-pglocks via CPython", keyspace.DjangoPGLocks, "日本語", keyspace.Int64(-1475652891)},

		// with_advisory_lock issue #84: lock_id #=> [2116437524, 0] for "user-#{user.id}", user 1.
		{"with_advisory_lock issue 84", keyspace.WithAdvisoryLock(0), "user-1", keyspace.Pair(2116437524, 0)},
		// The gem's lock_keys expression run in Ruby 3.1.2.
		{"with_advisory_lock via Ruby", keyspace.WithAdvisoryLock(42), "user-1", keyspace.Pair(2116437524, 42)},
		{"with_advisory_lock via Ruby", keyspace.WithAdvisoryLock(-1), "dbmigration", keyspace.Pair(2072846711, math.MaxInt32)},
		{"with_advisory_lock via Ruby", keyspace.WithAdvisoryLock(7), "日本語", keyspace.Pair(671830757, 7)},
		{"with_advisory_lock via Ruby", keyspace.WithAdvisoryLock(math.MinInt32), "dbmigration", keyspace.Pair(2072846711, 0)},

		// generate_migrator_advisory_lock_id run in Ruby 3.1.2.
		{"Rails via Ruby", keyspace.RailsMigrations, "myapp_production", keyspace.Int64(8572362244439197575)},
		{"Rails via Ruby", keyspace.RailsMigrations, "dbmigration", keyspace.Int64(4256513704418952795)},
		{"Rails via Ruby", keyspace.RailsMigrations, "", keyspace.Int64(0)},

		// lock.DefaultLockID, goose v3.26.0+ and v3.15.1–v3.25.
		{"goose DefaultLockID", keyspace.Goose, "anything", keyspace.Int64(4097083626)},
		{"goose DefaultLockID", keyspace.Goose, "", keyspace.Int64(4097083626)},
		{"goose DefaultLockID (old)", keyspace.GooseLegacy, "anything", keyspace.Int64(5887940537704921958)},

		// pals' Locker._lock_num expression run in CPython 3 on x86-64.
		{"pals via CPython", keyspace.Pals("TestLock"), "test_it", keyspace.Int64(-5798183527148201584)},
		{"pals via CPython", keyspace.Pals("myapp"), "dbmigration", keyspace.Int64(4011120877187327872)},
		{"pals via CPython", keyspace.Pals(""), "x", keyspace.Int64(-8959595975586502986)},

		// Scoped's second integer is Node's first.
		{"Scoped", keyspace.Scoped(7), "dbmigration", keyspace.Pair(7, -1682085387)},
		{"Scoped", keyspace.Scoped(-1), "", keyspace.Pair(-1, 1120186595)},

		{"explicit", keyspace.ExplicitInt64, "42", keyspace.Int64(42)},
		{"explicit", keyspace.ExplicitInt64, "int64(-9223372036854775808)", keyspace.Int64(math.MinInt64)},
		{"explicit", keyspace.ExplicitPair, "1,-2", keyspace.Pair(1, -2)},
		{"explicit", keyspace.ExplicitPair, "pair(-2147483648, 2147483647)", keyspace.Pair(math.MinInt32, math.MaxInt32)},
	}
	for _, tt := range tests {
		if got := tt.strategy.Key(tt.name); got != tt.want {
			t.Errorf("%s: Key(%q) = %v, want %v", tt.from, tt.name, got, tt.want)
		}
	}
}

// The goose constants are what their comments in goose say they are.
func TestGooseConstants(t *testing.T) {
	if got, _ := keyspace.Goose.Key("").Int64(); got != int64(crc32.ChecksumIEEE([]byte("goose"))) {
		t.Errorf("Goose = %d, want crc32(goose) = %d", got, crc32.ChecksumIEEE([]byte("goose")))
	}
	want := crc64.Checksum([]byte("goose"), crc64.MakeTable(crc64.ECMA))
	if got, _ := keyspace.GooseLegacy.Key("").Int64(); uint64(got) != want {
		t.Errorf("GooseLegacy = %d, want crc64(goose) = %d", got, want)
	}
}

// SQLx computes HKDF by hand; it must agree with crypto/hkdf.
func TestSQLxMatchesCryptoHKDF(t *testing.T) {
	for _, name := range []string{"", "a", "dbmigration", "my first Postgres advisory lock!", "\xff\x00", string(make([]byte, 300))} {
		okm, err := hkdf.Key(sha256.New, []byte(name), nil, "SQLx (Rust) Postgres advisory lock", 8)
		if err != nil {
			t.Fatalf("hkdf.Key(%q): %v", name, err)
		}
		want := keyspace.Int64(int64(binary.LittleEndian.Uint64(okm)))
		if got := keyspace.SQLx.Key(name); got != want {
			t.Errorf("SQLx.Key(%q) = %v, want %v (crypto/hkdf)", name, got, want)
		}
	}
}

func TestDjangoPGLockIsSHA256Int64(t *testing.T) {
	for _, name := range []string{"", "hello", "app.module.func"} {
		if a, b := keyspace.DjangoPGLock.Key(name), keyspace.SHA256Int64.Key(name); a != b {
			t.Errorf("Key(%q): DjangoPGLock %v, SHA256Int64 %v", name, a, b)
		}
	}
}

// GolangMigrateURL hashes the URL's path: "/" and the database name.
func TestGolangMigrateURL(t *testing.T) {
	for _, extra := range [][]string{nil, {"public"}, {"public", "schema_migrations"}, {"a", "", "b"}} {
		for _, db := range []string{"", "db", "/db", "日本語"} {
			got, want := keyspace.GolangMigrateURL(extra...).Key(db), keyspace.GolangMigrate(extra...).Key("/"+db)
			if got != want {
				t.Errorf("GolangMigrateURL(%q).Key(%q) = %v, want GolangMigrate's key of %q, %v", extra, db, got, "/"+db, want)
			}
		}
	}
}

// DjangoPGLocks is the CRC-32 as a signed int32, widened to a bigint.
func TestDjangoPGLocksSign(t *testing.T) {
	for _, name := range []string{"", "dbmigration", "myapp_production", "日本語", "\xff"} {
		n, ok := keyspace.DjangoPGLocks.Key(name).Int64()
		crc := crc32.ChecksumIEEE([]byte(name))
		if !ok || n < math.MinInt32 || n > math.MaxInt32 || uint32(n) != crc || (n < 0) != (crc >= 1<<31) {
			t.Errorf("DjangoPGLocks.Key(%q) = %d, %v: want crc32 %d as a signed int32", name, n, ok, crc)
		}
	}
}

// Rails keys are the salt times a CRC-32, which never overflows int64.
func TestRailsMigrationsRange(t *testing.T) {
	const salt = 2053462845 // and salt × (2³²−1) < 2⁶³
	for _, name := range []string{"", "postgres", "myapp_production"} {
		n, ok := keyspace.RailsMigrations.Key(name).Int64()
		if !ok || n < 0 || n%salt != 0 || n/salt != int64(crc32.ChecksumIEEE([]byte(name))) {
			t.Errorf("RailsMigrations.Key(%q) = %d, want %d × crc32", name, n, salt)
		}
	}
}

// GolangMigrate must not alias the caller's slice.
func TestGolangMigrateCopiesNames(t *testing.T) {
	names := []string{"schema_name_1"}
	s := keyspace.GolangMigrate(names...)
	names[0] = "schema_name_2"
	if got, want := s.Key("database_name"), keyspace.Int64(2453313553); got != want {
		t.Errorf("after changing the caller's slice: Key = %v, want %v", got, want)
	}
}

func TestScopedNamespaces(t *testing.T) {
	a, b := keyspace.Scoped(1).Key("nightly"), keyspace.Scoped(2).Key("nightly")
	if a == b {
		t.Fatalf("Scoped(1) and Scoped(2) share the key %v", a)
	}
	a1, a2, _ := a.Pair()
	b1, b2, _ := b.Pair()
	if a1 != 1 || b1 != 2 || a2 != b2 {
		t.Errorf("keys %v and %v: want namespaces 1 and 2 and one name hash", a, b)
	}
	if first, _, _ := keyspace.Node.Key("nightly").Pair(); first != a2 {
		t.Errorf("Scoped hash %d, want Node's first integer %d", a2, first)
	}
}

func TestExplicitRejects(t *testing.T) {
	for _, tt := range []struct {
		s    keyspace.Strategy
		name string
	}{
		{keyspace.ExplicitInt64, ""},
		{keyspace.ExplicitInt64, "x"},
		{keyspace.ExplicitInt64, "1,2"},       // a pair, not a bigint
		{keyspace.ExplicitInt64, "pair(1,2)"}, // likewise
		{keyspace.ExplicitInt64, "9223372036854775808"},
		{keyspace.ExplicitPair, "42"},        // a bigint, not a pair
		{keyspace.ExplicitPair, "int64(42)"}, // likewise
		{keyspace.ExplicitPair, "2147483648,0"},
		{keyspace.ExplicitPair, "1,2,3"},
	} {
		if got := tt.s.Key(tt.name); got != (keyspace.Key{}) {
			t.Errorf("Key(%q) = %v, want the zero Key", tt.name, got)
		}
	}
}

func TestWithAdvisoryLockFromEnv(t *testing.T) {
	const env = "WITH_ADVISORY_LOCK_PREFIX"
	crc := int32(crc32.ChecksumIEEE([]byte("user-1")) & 0x7fffffff)
	good := []struct {
		value string
		want  int32 // what Ruby's value.to_i & 0x7fffffff gives (Ruby 3.1.2)
	}{
		{"", 0},
		{"42", 42},
		{" +42\n", 42},
		{"-1", math.MaxInt32},
		{"1_000", 1000},
		{"0d12", 12},
		{"-0d5", 2147483643},
		{"2147483648", 0},
		{"99999999999999999999", 1661992959},
		{"-99999999999999999999", 485490689},
	}
	for _, tt := range good {
		t.Setenv(env, tt.value)
		s, err := keyspace.WithAdvisoryLockFromEnv()
		if err != nil {
			t.Errorf("%s=%q: %v", env, tt.value, err)
			continue
		}
		if got, want := s.Key("user-1"), keyspace.Pair(crc, tt.want); got != want {
			t.Errorf("%s=%q: Key(user-1) = %v, want %v", env, tt.value, got, want)
		}
	}
	// Values Ruby's to_i reads only in part (Integer(v, 10) raises).
	for _, value := range []string{"abc", "12abc", " ", "1_", "1__0", "0x1A", "+-1", "１２"} {
		t.Setenv(env, value)
		s, err := keyspace.WithAdvisoryLockFromEnv()
		if !errors.Is(err, keyspace.ErrSyntax) || s != nil {
			t.Errorf("%s=%q: got %v, %v, want nil and an error wrapping ErrSyntax", env, value, s, err)
		}
	}
	unsetenv(t, env)
	s, err := keyspace.WithAdvisoryLockFromEnv()
	if err != nil || s.Key("user-1") != keyspace.Pair(crc, 0) {
		t.Errorf("unset: got %v, %v, want prefix 0", s, err)
	}
}

// unsetenv unsets key for the rest of the test and restores it afterwards.
func unsetenv(t testing.TB, key string) {
	t.Helper()
	t.Setenv(key, "") // registers the restore
	if err := os.Unsetenv(key); err != nil {
		t.Fatal(err)
	}
}
