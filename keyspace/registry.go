package keyspace

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// ErrUnknownStrategy reports a name that [Lookup] does not know.
var ErrUnknownStrategy = errors.New("keyspace: unknown strategy")

// Parameterised names accepted by Lookup besides those of Names.
const (
	palsPrefix   = "pals:"
	scopedPrefix = "scoped:"
)

// strategies returns the fixed-name registry. It builds a fresh map on each
// call, so the package keeps no mutable state and reassigning an exported
// variable such as Node does not change what Lookup returns.
func strategies() map[string]func() (Strategy, error) {
	fixed := func(s Strategy) func() (Strategy, error) {
		return func() (Strategy, error) { return s, nil }
	}
	return map[string]func() (Strategy, error){
		"node":               fixed(Func(nodeKey)),
		"node-legacy":        fixed(Func(nodeLegacyKey)),
		"sha256-int64":       fixed(Func(sha256Int64Key)),
		"sqlx":               fixed(Func(sqlxKey)),
		"with-advisory-lock": WithAdvisoryLockFromEnv,
		"rails-migrations":   fixed(Func(railsMigrationsKey)),
		"golang-migrate":     fixed(GolangMigrate("public", "schema_migrations")),
		"golang-migrate-url": fixed(GolangMigrateURL("public", "schema_migrations")),
		"goose":              fixed(Func(gooseKey)),
		"goose-legacy":       fixed(Func(gooseLegacyKey)),
		"django-pglock":      fixed(Func(sha256Int64Key)),
		"django-pglocks":     fixed(Func(djangoPGLocksKey)),
		"int64":              fixed(Func(explicitInt64Key)),
		"pair":               fixed(Func(explicitPairKey)),
	}
}

// Names returns, sorted, the fixed names [Lookup] accepts. These names are
// stable: a name, once listed, keeps meaning the same scheme.
func Names() []string {
	return slices.Sorted(maps.Keys(strategies()))
}

// Lookup returns the strategy with the given stable name, for command-line
// flags and configuration files:
//
//	node                Node, the default (advisory-lock for Node v1.1.1+)
//	node-legacy         NodeLegacy (advisory-lock up to v1.1.0)
//	sha256-int64        SHA256Int64
//	sqlx                SQLx (Rust sqlx, PgAdvisoryLock::new)
//	with-advisory-lock  WithAdvisoryLockFromEnv (Ruby with_advisory_lock); the
//	                    prefix is read from the environment during Lookup
//	rails-migrations    RailsMigrations; the lock name is the database name
//	golang-migrate      GolangMigrate("public", "schema_migrations"); the
//	                    lock name is the database name (postgres.WithInstance)
//	golang-migrate-url  GolangMigrateURL("public", "schema_migrations"); the
//	                    lock name is the database name in the URL (the
//	                    migrate command, migrate.New)
//	goose               Goose (goose v3.26+; one key for every name)
//	goose-legacy        GooseLegacy (goose v3.15.1 to v3.25)
//	django-pglock       DjangoPGLock (the same keys as sha256-int64)
//	django-pglocks      DjangoPGLocks (Python django-pglocks, signed CRC-32)
//	int64               ExplicitInt64; the lock name is a bigint key, "42"
//	pair                ExplicitPair; the lock name is a pair key, "1,-2"
//	pals:<app>          Pals(app) (Python pals, Locker(app_name=app))
//	scoped:<n>          Scoped(n), n a decimal int32
//
// An unknown name yields an error wrapping [ErrUnknownStrategy] that lists
// the valid names, and so does scoped:<n> when n is not a decimal int32. For
// with-advisory-lock, a malformed
// WITH_ADVISORY_LOCK_PREFIX yields the error of [WithAdvisoryLockFromEnv].
func Lookup(name string) (Strategy, error) {
	if app, ok := strings.CutPrefix(name, palsPrefix); ok {
		return Pals(app), nil
	}
	if n, ok := strings.CutPrefix(name, scopedPrefix); ok {
		ns, err := strconv.ParseInt(n, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w %q: the namespace of scoped:<n> must be a decimal int32", ErrUnknownStrategy, name)
		}
		return Scoped(int32(ns)), nil
	}
	all := strategies()
	if s, ok := all[name]; ok {
		return s()
	}
	valid := append(slices.Sorted(maps.Keys(all)), palsPrefix+"<app>", scopedPrefix+"<n>")
	return nil, fmt.Errorf("%w %q: valid names are %s", ErrUnknownStrategy, name, strings.Join(valid, ", "))
}
