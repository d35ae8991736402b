// Package gooselegacy_test proves keyspace goose-legacy against goose
// v3.25.0, the last release that locked the CRC-64 key. It is a module of
// its own because interop's module already requires goose v3.30.1.
package gooselegacy_test

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/interop/harness"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/pressly/goose/v3/lock"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestGooseLegacy(t *testing.T) {
	if got, _ := keyspace.GooseLegacy.Key("").Int64(); got != lock.DefaultLockID {
		t.Fatalf("keyspace.GooseLegacy = %d, goose's lock.DefaultLockID = %d", got, lock.DefaultLockID)
	}
	holder, err := lock.NewPostgresSessionLocker()
	if err != nil {
		t.Fatal(err)
	}
	quick, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	harness.CheckSessionLocker(t, "goose-legacy", holder, quick)
}
