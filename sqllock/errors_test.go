package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An error's message says the package name once, however deep its causes
// of this package nest; errors.Is still finds each of them.
func TestErrorSaysThePackageOnce(t *testing.T) {
	cause := fmt.Errorf("%w: keep-alive: %w (%w: backend 7)", sqllock.ErrLockLost,
		fmt.Errorf("%w (500ms, the keep-alive timeout)", sqllock.ErrNoAnswer), sqllock.ErrNotReleased)
	err := &sqllock.Error{Op: "hold", Name: "nightly", Key: keyspace.Int64(42), Err: cause}
	want := `sqllock: hold "nightly" int64(42): lock lost: keep-alive: no answer from the server within sqllock's bound (500ms, the keep-alive timeout) (release not confirmed: the abandoned session may hold the lock until the server ends it: backend 7)`
	if got := err.Error(); got != want {
		t.Errorf("message:\ngot  %s\nwant %s", got, want)
	}
	for _, target := range []error{sqllock.ErrLockLost, sqllock.ErrNoAnswer, sqllock.ErrNotReleased} {
		if !errors.Is(err, target) {
			t.Errorf("errors.Is(err, %v) = false", target)
		}
	}
}

func TestMockBadInput(t *testing.T) {
	db, _, err := sqlmock.New()
	require.NoError(t, err)
	defer db.Close()
	var nilCtx context.Context
	noop := func(context.Context) error { return nil }
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"nil db", func() error { return sqllock.New(nil).Mutex("x").Lock(context.Background()) }, sqllock.ErrNilDB},
		{"nil db trylock", func() error { _, err := sqllock.New(nil).Mutex("x").TryLock(context.Background()); return err }, sqllock.ErrNilDB},
		{"nil db withlock", func() error { return sqllock.New(nil).Mutex("x").WithLock(context.Background(), noop) }, sqllock.ErrNilDB},
		{"nil context lock", func() error { return sqllock.New(db).Mutex("x").Lock(nilCtx) }, sqllock.ErrNilContext},
		{"nil context unlock", func() error { return sqllock.New(db).Mutex("x").Unlock(nilCtx) }, sqllock.ErrNilContext},
		{"nil context withlock", func() error { return sqllock.New(db).Mutex("x").WithLock(nilCtx, noop) }, sqllock.ErrNilContext},
		{"nil fn", func() error { return sqllock.New(db).Mutex("x").WithLock(context.Background(), nil) }, sqllock.ErrNilFunc},
		{"unlock never locked", func() error { return sqllock.New(db).Mutex("x").Unlock(context.Background()) }, sqllock.ErrNotHeld},
		{"unlock shared never locked", func() error { return sqllock.New(db).Mutex("x").UnlockShared(context.Background()) }, sqllock.ErrNotHeld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			require.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), `"x"`, "the error names the lock")
		})
	}
}

func TestMockStickyErrors(t *testing.T) {
	db, _, err := sqlmock.New()
	require.NoError(t, err)
	defer db.Close()
	panicky := keyspace.Func(func(string) keyspace.Key { panic("bad strategy") })
	empty := keyspace.Func(func(string) keyspace.Key { return keyspace.Key{} })
	tests := []struct {
		name string
		mu   *sqllock.Mutex
		want string
	}{
		{"nil strategy", sqllock.New(db, sqllock.WithKeyspace(nil)).Mutex("x"), "nil keyspace.Strategy"},
		{"negative timeout", sqllock.New(db, sqllock.WithKeepAlive(time.Second, -1)).Mutex("x"), "negative timeout"},
		{"nil option", sqllock.New(db, nil).Mutex("x"), "nil Option"},
		{"panicking strategy", sqllock.New(db, sqllock.WithKeyspace(panicky)).Mutex("x"), "panicked: bad strategy"},
		{"invalid key from strategy", sqllock.New(db, sqllock.WithKeyspace(empty)).Mutex("x"), "no valid key"},
		{"zero key", sqllock.New(db).MutexKey(keyspace.Key{}), "zero Key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, err := range []error{
				tt.mu.Lock(context.Background()),
				tt.mu.Unlock(context.Background()),
				tt.mu.WithLockShared(context.Background(), func(context.Context) error { return nil }),
			} {
				require.ErrorContains(t, err, tt.want)
			}
			_, err := tt.mu.TryLock(context.Background())
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestServerErrorsNameTheLock(t *testing.T) {
	// A closed port: the error names the lock and wraps the driver's error.
	for _, driver := range []string{"postgres", "pgx"} {
		db, err := sql.Open(driver, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2")
		require.NoError(t, err)
		defer db.Close()
		mu := sqllock.New(db).Mutex("unreachable")
		err = mu.Lock(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"unreachable"`)
		assert.Contains(t, err.Error(), mu.Key().String())
	}
}

func TestClosedDB(t *testing.T) {
	eachDriver(t, func(t *testing.T, db *sql.DB) {
		mu := sqllock.New(db).Mutex(t.Name())
		require.NoError(t, db.Close())
		err := mu.Lock(t.Context())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "database is closed")
	})
}

// A wrong password: the error names the lock and its key, and the password
// appears nowhere in it.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t, "password_encryption=scram-sha-256")
	admin, err := sql.Open("pgx", c.DSN())
	require.NoError(t, err)
	defer admin.Close()
	_, err = admin.ExecContext(t.Context(), "CREATE ROLE locker LOGIN PASSWORD 'right-horse-battery'")
	require.NoError(t, err)
	// Passwords for everyone but the superuser over TCP.
	hba := "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n"
	require.NoError(t, os.WriteFile(filepath.Join(c.Dir(), "pg_hba.conf"), []byte(hba), 0o600))
	if out, err := c.PGCtl(t, "reload"); err != nil {
		t.Fatalf("pg_ctl reload: %v\n%s", err, out)
	}
	const wrong = "wrong-staple-7781"
	dsn := fmt.Sprintf("postgres://locker:%s@127.0.0.1:%d/postgres?sslmode=disable", wrong, c.Port())
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db, err := sql.Open(driver, dsn)
			require.NoError(t, err)
			defer db.Close()
			mu := sqllock.New(db).Mutex("billing")
			err = mu.Lock(t.Context())
			require.Error(t, err)
			t.Logf("%s: %v", driver, err)
			assert.Contains(t, err.Error(), `"billing"`)
			assert.Contains(t, err.Error(), mu.Key().String())
			assert.Contains(t, err.Error(), "password authentication failed")
			assert.NotContains(t, err.Error(), wrong, "the password must never appear")
		})
	}
}
