package keyspace_test

import (
	"errors"
	"fmt"
	"strings"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func ExampleDefault() {
	fmt.Println(keyspace.Default.Key("dbmigration"))
	// Output: pair(-1682085387,-1149921686)
}

func ExampleInt64() {
	k := keyspace.Int64(42)
	classid, objid, objsubid := k.LockTag()
	fmt.Println(k, k.Space(), classid, objid, objsubid)
	// Output: int64(42) int64 0 42 1
}

func ExampleFunc() {
	// A scheme of your own: every tenant's jobs in its own first integer.
	const tenant = 7
	perTenant := keyspace.Func(func(name string) keyspace.Key {
		_, b, _ := keyspace.Node.Key(name).Pair()
		return keyspace.Pair(tenant, b)
	})
	fmt.Println(perTenant.Key("nightly-report"))
	// Output: pair(7,-2017152350)
}

func ExampleParse() {
	k, err := keyspace.Parse("pair(1,-2)")
	fmt.Println(k, err)
	_, err = keyspace.Parse("one")
	fmt.Println(err)
	// Output:
	// pair(1,-2) <nil>
	// keyspace: invalid syntax: "one": want a decimal int64, as in "42"
}

func ExampleSQLx() {
	// The vector in sqlx's documentation of PgAdvisoryLock::new.
	fmt.Println(keyspace.SQLx.Key("my first Postgres advisory lock!"))
	// Output: int64(-5560419505042474287)
}

func ExampleWithAdvisoryLock() {
	// with_advisory_lock("user-1") in Ruby, WITH_ADVISORY_LOCK_PREFIX unset,
	// then set to 42.
	fmt.Println(keyspace.WithAdvisoryLock(0).Key("user-1"))
	fmt.Println(keyspace.WithAdvisoryLock(42).Key("user-1"))
	// Output:
	// pair(2116437524,0)
	// pair(2116437524,42)
}

func ExampleRailsMigrations() {
	// The lock `rails db:migrate` holds on the database myapp_production.
	fmt.Println(keyspace.RailsMigrations.Key("myapp_production"))
	// Output: int64(8572362244439197575)
}

func ExampleGolangMigrate() {
	// The vectors in golang-migrate's tests: a database name alone, and
	// with one additional name.
	fmt.Println(keyspace.GolangMigrate().Key("database_name"))
	fmt.Println(keyspace.GolangMigrate("schema_name_1").Key("database_name"))
	// The postgres driver with its default migrations table, opened with
	// postgres.WithInstance on the database myapp_production.
	fmt.Println(keyspace.GolangMigrate("public", "schema_migrations").Key("myapp_production"))
	// Output:
	// int64(1764327054)
	// int64(2453313553)
	// int64(2363960938)
}

func ExampleGolangMigrateURL() {
	// The lock `migrate -database postgres://host/myapp_production up` holds:
	// the driver hashes the URL's path, "/myapp_production".
	fmt.Println(keyspace.GolangMigrateURL("public", "schema_migrations").Key("myapp_production"))
	// Output: int64(3684552294)
}

func ExampleGoose() {
	// One key whatever the name: goose's lock.DefaultLockID.
	fmt.Println(keyspace.Goose.Key("migrations"), keyspace.GooseLegacy.Key("migrations"))
	// Output: int64(4097083626) int64(5887940537704921958)
}

func ExampleDjangoPGLock() {
	// pglock.advisory("hello"); pg_locks shows it as classid 245608543,
	// objid 3125670444, the pair pglock.advisory_id("hello") returns.
	k := keyspace.DjangoPGLock.Key("hello")
	classid, objid, _ := k.LockTag()
	fmt.Println(k, classid, objid)
	// Output: int64(1054880662928880172) 245608543 3125670444
}

func ExampleDjangoPGLocks() {
	// django_pglocks.advisory_lock("dbmigration"), and a name whose CRC-32
	// has its top bit set, so its key is negative.
	fmt.Println(keyspace.DjangoPGLocks.Key("dbmigration"))
	fmt.Println(keyspace.DjangoPGLocks.Key("myapp_production"))
	// Output:
	// int64(2072846711)
	// int64(-120378861)
}

func ExamplePals() {
	// pals.Locker("TestLock", db_url).lock("test_it")
	fmt.Println(keyspace.Pals("TestLock").Key("test_it"))
	// Output: int64(-5798183527148201584)
}

func ExampleScoped() {
	// Two tenants sharing a database take "nightly" without colliding.
	fmt.Println(keyspace.Scoped(1).Key("nightly"))
	fmt.Println(keyspace.Scoped(2).Key("nightly"))
	// Output:
	// pair(1,-1251853526)
	// pair(2,-1251853526)
}

func ExampleExplicitInt64() {
	fmt.Println(keyspace.ExplicitInt64.Key("42"))
	fmt.Println(keyspace.ExplicitInt64.Key("1,-2").Valid())
	// Output:
	// int64(42)
	// false
}

func ExampleLookup() {
	s, err := keyspace.Lookup("sqlx")
	fmt.Println(s.Key("my first Postgres advisory lock!"), err)
	_, err = keyspace.Lookup("flyway")
	fmt.Println(errors.Is(err, keyspace.ErrUnknownStrategy))
	// Output:
	// int64(-5560419505042474287) <nil>
	// true
}

func ExampleNames() {
	fmt.Println(strings.Join(keyspace.Names(), " "))
	// Output: django-pglock django-pglocks golang-migrate golang-migrate-url goose goose-legacy int64 node node-legacy pair rails-migrations sha256-int64 sqlx with-advisory-lock
}
