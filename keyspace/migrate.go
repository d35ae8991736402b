package keyspace

import "hash/crc32"

// golangMigrateSalt is advisoryLockIdSalt in golang-migrate's database/util.go.
const golangMigrateSalt = 1486364155

// GolangMigrate returns the scheme of golang-migrate/migrate v4,
// database.GenerateAdvisoryLockId(databaseName, additionalNames...) in
// database/util.go: the lock name is the database name; it and the
// additional names are joined with NUL bytes, and the key is
// uint32(crc32(joined) × 1486364155), wrapping at 32 bits, in the bigint
// space (0 ≤ key < 2³²). The database name comes first:
//
//	crc32("dbname\x00schema\x00table")
//
// The postgres driver passes the migrations table's schema and name, so
// GolangMigrate("public", "schema_migrations") contends with migrate using
// its default table in a database whose current_schema() is public. Older
// releases passed only the schema (GolangMigrate("public")), and releases
// before multi-schema support (late 2018) passed nothing (GolangMigrate()).
// GolangMigrate() maps "database_name" to 1764327054, the value
// golang-migrate's own test asserts.
//
// Keys carry 32 bits of the names: even odds of some collision at about
// 77,000 databases.
func GolangMigrate(additionalNames ...string) Strategy {
	extra := make([][]byte, len(additionalNames))
	for i, n := range additionalNames {
		extra[i] = append([]byte{0}, n...)
	}
	return Func(func(database string) Key {
		sum := crc32.ChecksumIEEE([]byte(database))
		for _, b := range extra {
			sum = crc32.Update(sum, crc32.IEEETable, b)
		}
		return Int64(int64(sum * golangMigrateSalt))
	})
}

// Goose is the advisory-lock key of pressly/goose's Postgres session locker
// (lock.NewPostgresSessionLocker), lock.DefaultLockID in goose v3.26.0 and
// later: 4097083626, the CRC-32
// (IEEE) of "goose", in the bigint space, whatever the lock name. Every name
// deliberately maps to that one key: take it to keep goose migrations out
// while you work, or to wait for them.
//
// Goose v3.15.1 through v3.25 used a different key; see [GooseLegacy].
var Goose Strategy = Func(gooseKey)

// GooseLegacy is the key of pressly/goose's Postgres session locker before
// v3.26.0 (lock.DefaultLockID in v3.15.1 through v3.25):
// 5887940537704921958, the CRC-64 (ECMA) of "goose", in the bigint space,
// whatever the lock name. Like [Goose], every name maps to that one key.
var GooseLegacy Strategy = Func(gooseLegacyKey)

const (
	gooseLockID       = 4097083626          // crc32.ChecksumIEEE([]byte("goose"))
	gooseLegacyLockID = 5887940537704921958 // crc64.Checksum([]byte("goose"), crc64.MakeTable(crc64.ECMA))
)

func gooseKey(string) Key       { return Int64(gooseLockID) }
func gooseLegacyKey(string) Key { return Int64(gooseLegacyLockID) }
