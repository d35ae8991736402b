package keyspace

import "hash/crc32"

// golangMigrateSalt is advisoryLockIdSalt in golang-migrate's database/util.go.
const golangMigrateSalt = 1486364155

// GolangMigrate returns the scheme of golang-migrate/migrate v4 (v4.1.0
// through v4.20.1), database.GenerateAdvisoryLockId(databaseName,
// additionalNames...) in database/util.go: the lock name is the database
// name; the additional names, then the database name, are joined with NUL
// bytes, and the key is uint32(crc32(joined) × 1486364155), wrapping at 32
// bits, in the bigint space (0 ≤ key < 2³²). The database name comes last:
//
//	crc32("schema\x00table\x00dbname")
//
// The postgres driver passes the migrations table's schema and name, so
// GolangMigrate("public", "schema_migrations") contends with migrate using
// its default table in a database whose current_schema() is public, for a
// driver opened with postgres.WithInstance, which hashes current_database().
// The migrate command and migrate.New open the driver from a URL and hash
// the URL's path, "/dbname", instead: see [GolangMigrateURL].
//
// golang-migrate's own test (database/util_test.go) asserts that
// GolangMigrate() maps "database_name" to 1764327054 and
// GolangMigrate("schema_name_1") maps it to 2453313553.
//
// Keys carry 32 bits of the names: even odds of some collision at about
// 77,000 databases.
func GolangMigrate(additionalNames ...string) Strategy {
	return golangMigrate("", additionalNames)
}

// GolangMigrateURL is [GolangMigrate] for golang-migrate opened from a URL,
// as the migrate command and migrate.New open it: the postgres driver's Open
// passes the URL's path, "/dbname" with its slash, as the database name. The
// lock name is still the database name, without the slash:
// GolangMigrateURL(additionalNames...).Key("db") is
// GolangMigrate(additionalNames...).Key("/db").
func GolangMigrateURL(additionalNames ...string) Strategy {
	return golangMigrate("/", additionalNames)
}

// golangMigrate hashes the additional names, NUL after each, then dbPrefix
// and the lock name.
func golangMigrate(dbPrefix string, additionalNames []string) Strategy {
	var head []byte
	for _, n := range additionalNames {
		head = append(append(head, n...), 0)
	}
	head = append(head, dbPrefix...)
	start := crc32.ChecksumIEEE(head)
	return Func(func(database string) Key {
		sum := crc32.Update(start, crc32.IEEETable, []byte(database))
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
