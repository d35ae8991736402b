package keyspace_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/advisorylock/go-advisory-lock/keyspace"
)

// The stable names the CLI and configuration files rely on.
var stableNames = []string{
	"django-pglock", "django-pglocks", "golang-migrate", "golang-migrate-url", "goose", "goose-legacy", "int64", "node",
	"node-legacy", "pair", "rails-migrations", "sha256-int64", "sqlx", "with-advisory-lock",
}

func TestNames(t *testing.T) {
	names := keyspace.Names()
	if !slices.IsSorted(names) {
		t.Errorf("Names() = %q: not sorted", names)
	}
	for _, want := range stableNames {
		if !slices.Contains(names, want) {
			t.Errorf("Names() lacks %q", want)
		}
	}
	names[0] = "mutated"
	if keyspace.Names()[0] == "mutated" {
		t.Error("Names returns shared state")
	}
}

// Each name maps to the strategy its documentation names.
func TestLookup(t *testing.T) {
	unsetenv(t, "WITH_ADVISORY_LOCK_PREFIX")
	tests := []struct {
		name string
		want keyspace.Strategy
	}{
		{"node", keyspace.Node},
		{"node", keyspace.Default},
		{"node-legacy", keyspace.NodeLegacy},
		{"sha256-int64", keyspace.SHA256Int64},
		{"sqlx", keyspace.SQLx},
		{"with-advisory-lock", keyspace.WithAdvisoryLock(0)},
		{"rails-migrations", keyspace.RailsMigrations},
		{"golang-migrate", keyspace.GolangMigrate("public", "schema_migrations")},
		{"golang-migrate-url", keyspace.GolangMigrateURL("public", "schema_migrations")},
		{"goose", keyspace.Goose},
		{"goose-legacy", keyspace.GooseLegacy},
		{"django-pglock", keyspace.DjangoPGLock},
		{"django-pglocks", keyspace.DjangoPGLocks},
		{"int64", keyspace.ExplicitInt64},
		{"pair", keyspace.ExplicitPair},
		{"pals:myapp", keyspace.Pals("myapp")},
		{"pals:", keyspace.Pals("")},
		{"scoped:7", keyspace.Scoped(7)},
		{"scoped:-2147483648", keyspace.Scoped(-2147483648)},
	}
	for _, tt := range tests {
		got, err := keyspace.Lookup(tt.name)
		if err != nil {
			t.Errorf("Lookup(%q): %v", tt.name, err)
			continue
		}
		for _, lock := range []string{"", "dbmigration", "42", "1,-2", "日本語"} {
			if g, w := got.Key(lock), tt.want.Key(lock); g != w {
				t.Errorf("Lookup(%q).Key(%q) = %v, want %v", tt.name, lock, g, w)
			}
		}
	}
	for _, name := range keyspace.Names() {
		if _, err := keyspace.Lookup(name); err != nil {
			t.Errorf("Lookup(%q) of a listed name: %v", name, err)
		}
	}
}

func TestLookupUnknown(t *testing.T) {
	for _, name := range []string{"", "nope", "Node", " node", "pals", "scoped"} {
		s, err := keyspace.Lookup(name)
		if !errors.Is(err, keyspace.ErrUnknownStrategy) || s != nil {
			t.Errorf("Lookup(%q) = %v, %v, want an error wrapping ErrUnknownStrategy", name, s, err)
			continue
		}
		for _, valid := range append(keyspace.Names(), "pals:<app>", "scoped:<n>") {
			if !strings.Contains(err.Error(), valid) {
				t.Errorf("Lookup(%q) error %q does not list %q", name, err, valid)
			}
		}
	}
}

func TestLookupBadNamespace(t *testing.T) {
	for _, name := range []string{"scoped:", "scoped:x", "scoped:2147483648", "scoped: 1"} {
		s, err := keyspace.Lookup(name)
		if !errors.Is(err, keyspace.ErrUnknownStrategy) || s != nil || !strings.Contains(err.Error(), "int32") {
			t.Errorf("Lookup(%q) = %v, %v, want an error wrapping ErrUnknownStrategy that asks for an int32", name, s, err)
		}
	}
}

// with-advisory-lock reads its prefix during Lookup and reports a bad one.
func TestLookupWithAdvisoryLockEnv(t *testing.T) {
	t.Setenv("WITH_ADVISORY_LOCK_PREFIX", "42")
	s, err := keyspace.Lookup("with-advisory-lock")
	if err != nil || s.Key("user-1") != keyspace.Pair(2116437524, 42) {
		t.Errorf("prefix 42: got %v, %v", s, err)
	}
	t.Setenv("WITH_ADVISORY_LOCK_PREFIX", "forty-two")
	if _, err := keyspace.Lookup("with-advisory-lock"); !errors.Is(err, keyspace.ErrSyntax) {
		t.Errorf("prefix forty-two: error %v, want ErrSyntax", err)
	}
}
