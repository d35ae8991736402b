package interop_test

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/interop/harness"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/pressly/goose/v3/lock"
)

// goose v3.30.1 (go.mod) locks keyspace.Goose; v3.25.0 and goose-legacy
// are in the gooselegacy module, since one module holds one goose.
func TestGoose(t *testing.T) {
	if got, _ := keyspace.Goose.Key("").Int64(); got != lock.DefaultLockID {
		t.Fatalf("keyspace.Goose = %d, goose's lock.DefaultLockID = %d", got, lock.DefaultLockID)
	}
	holder, err := lock.NewPostgresSessionLocker()
	if err != nil {
		t.Fatal(err)
	}
	quick, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 1))
	if err != nil {
		t.Fatal(err)
	}
	harness.CheckSessionLocker(t, "goose", holder, quick)
}
