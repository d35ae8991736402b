package interop_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	"github.com/golang-migrate/migrate/v4/database/postgres"
	_ "github.com/golang-migrate/migrate/v4/source/file"

	"github.com/advisorylock/go-advisory-lock/interop/harness"
)

// golang-migrate's postgres driver opened with postgres.WithInstance
// hashes current_database(): keyspace golang-migrate.
func TestGolangMigrateWithInstance(t *testing.T) {
	const ks = "golang-migrate"
	t.Run("MigrateHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		drv := withInstance(t, db)
		checkDriverHolds(t, db, ks, drv)
	})
	t.Run("WithlockHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		drv := withInstance(t, db)
		release := db.HoldWithlock(t, ks, db.Name)
		locked := make(chan error, 1)
		go func() { locked <- drv.Lock() }()
		db.WaitForWaiter(t, harness.Key(t, ks, db.Name))
		select {
		case err := <-locked:
			t.Fatalf("the driver's Lock returned (%v) while withlock held the lock", err)
		default:
		}
		release()
		if err := <-locked; err != nil {
			t.Fatalf("the driver's Lock after withlock released: %v", err)
		}
		if err := drv.Unlock(); err != nil {
			t.Fatal(err)
		}
	})
}

// golang-migrate opened from a URL, as migrate.New and the migrate command
// open it, hashes the URL's path "/db": keyspace golang-migrate-url.
func TestGolangMigrateURL(t *testing.T) {
	const ks = "golang-migrate-url"
	t.Run("MigrateHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		drv, err := database.Open(db.DSN) // what migrate.New does with its URL
		if err != nil {
			t.Fatal(err)
		}
		defer drv.Close()
		checkDriverHolds(t, db, ks, drv)
	})
	t.Run("WithlockHolds", func(t *testing.T) {
		db := harness.NewDB(t)
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "1_t.up.sql"), []byte("CREATE TABLE t (id int);"), 0o644); err != nil {
			t.Fatal(err)
		}
		m, err := migrate.New("file://"+dir, db.DSN)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		release := db.HoldWithlock(t, ks, db.Name)
		up := make(chan error, 1)
		go func() { up <- m.Up() }()
		db.WaitForWaiter(t, harness.Key(t, ks, db.Name))
		select {
		case err := <-up:
			t.Fatalf("migrate Up returned (%v) while withlock held the lock", err)
		default:
		}
		release()
		if err := <-up; err != nil && !errors.Is(err, migrate.ErrNoChange) {
			t.Fatalf("migrate Up after withlock released: %v", err)
		}
		var n int
		if err := db.SQL.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatalf("the migration did not run: %v", err)
		}
	})
}

// withInstance opens the postgres driver with postgres.WithInstance on a
// pool of its own, closed (with the driver's session and any lock it holds)
// when the test ends.
func withInstance(t *testing.T, db *harness.DB) database.Driver {
	t.Helper()
	drv, err := postgres.WithInstance(db.Open(t), &postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	return drv
}

// checkDriverHolds locks drv and checks that withlock -n then exits 75,
// and 0 once drv unlocks.
func checkDriverHolds(t *testing.T, db *harness.DB, ks string, drv database.Driver) {
	t.Helper()
	if err := drv.Lock(); err != nil {
		t.Fatal(err)
	}
	db.WantHeld(t, harness.Key(t, ks, db.Name))
	if got := db.TryWithlock(t, ks, db.Name); got != 75 {
		t.Errorf("withlock -n --keyspace %s %s while golang-migrate holds its lock: exit %d, want 75", ks, db.Name, got)
	}
	if err := drv.Unlock(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if got := db.TryWithlock(t, ks, db.Name); got != 0 {
		t.Errorf("withlock -n after golang-migrate unlocked: exit %d, want 0", got)
	}
}
