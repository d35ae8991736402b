package drivers_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// distinctKeys is how many keys the wrapper checks cycle through: more
// than pgx's statement cache (512), so that a statement per key would
// show.
const distinctKeys = 600

// Behind an instrumentation wrapper, pgx still gets one statement text per
// operation with the key as parameters: the server holds a handful of
// prepared statements, not one per key.
func TestWrappedPgxPreparesPerOperationNotPerKey(t *testing.T) {
	t.Parallel()
	for n, name := range []string{"pgx", "otelsql-pgx", "sqlhooks-pgx"} {
		base := int64(7_300_000 + 10_000*n) // keys of its own: the subtests run in parallel
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, err := setupNamed(name)
			if err != nil {
				t.Fatal(err)
			}
			db, _ := openSetup(t, s)
			db.SetMaxOpenConns(1) // every statement, and the count, on one session
			l := sqllock.New(db)
			for i := range distinctKeys {
				m := l.MutexKey(keyspace.Int64(base + int64(i)))
				ok, err := m.TryLock(t.Context())
				if err != nil || !ok {
					t.Fatalf("TryLock of a free key = %v, %v", ok, err)
				}
				if err := m.Unlock(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			var prepared int
			if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_prepared_statements").Scan(&prepared); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d distinct keys: %d prepared statements on the session", distinctKeys, prepared)
			if prepared > 16 {
				t.Errorf("%d prepared statements on the session after %d distinct keys, want a handful: the key is in the statement text, so each key is prepared anew", prepared, distinctKeys)
			}
		})
	}
}

// bun's pgdriver gives up on any read after its read timeout (10s by
// default), whatever the context says. A Lock whose wait outlasts it fails
// with ErrDriverTimeout, and leaves nothing waiting in the server.
func TestBunPgdriverReadTimeout(t *testing.T) {
	t.Parallel()
	const readTimeout = 300 * time.Millisecond
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(pgtest.DSN(t)), pgdriver.WithReadTimeout(readTimeout)))
	t.Cleanup(func() { _ = db.Close() })
	l := sqllock.New(db)
	holder, waiter := l.Mutex(t.Name()), l.Mutex(t.Name())
	if err := holder.Lock(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer holder.Unlock(context.Background())
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := waiter.Lock(ctx)
	took := time.Since(start)
	if !errors.Is(err, sqllock.ErrDriverTimeout) {
		t.Fatalf("Lock that outlasts pgdriver's read timeout (%v): %v, want an error wrapping ErrDriverTimeout", readTimeout, err)
	}
	t.Logf("Lock returned after %v: %v", took, err)
	if rows := lockRows(t, db, holder.Key()); len(rows) != 1 || !rows[0].granted {
		t.Fatalf("pg_locks right after the timed-out Lock returned: %v, want only the holder", rows)
	}
}

// BenchmarkWrappedDrivers measures a TryLock+Unlock cycle over distinct
// keys through each wrapper against the same driver bare, library ("lib")
// and hand-written SQL ("ref", the key as a parameter on a pinned
// connection) side by side: a wrapper must not make the library's
// statements slower than the driver's own.
func BenchmarkWrappedDrivers(b *testing.B) {
	for _, name := range []string{"pgx", "otelsql-pgx", "sqlhooks-pgx", "libpq", "otelsql-libpq"} {
		b.Run("setup="+name, func(b *testing.B) {
			s, err := setupNamed(name)
			if err != nil {
				b.Fatal(err)
			}
			db, _ := openSetup(b, s)
			db.SetMaxOpenConns(1)
			db.SetMaxIdleConns(1)
			ctx := context.Background()
			b.Run("impl=lib", func(b *testing.B) {
				l := sqllock.New(db)
				ms := make([]*sqllock.Mutex, distinctKeys)
				for i := range ms {
					ms[i] = l.MutexKey(keyspace.Int64(int64(7_400_000 + i)))
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					m := ms[i%distinctKeys]
					i++
					if ok, err := m.TryLock(ctx); err != nil || !ok {
						b.Fatalf("TryLock = %v, %v", ok, err)
					}
					if err := m.Unlock(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("impl=ref", func(b *testing.B) {
				c, err := db.Conn(ctx)
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				try, unlock := "SELECT pg_try_advisory_lock($1)", "SELECT pg_advisory_unlock($1)"
				literal := name == "libpq" || name == "otelsql-libpq" // lib/pq's fastest form
				b.ReportAllocs()
				i := 0
				var ok bool
				for b.Loop() {
					k := int64(7_400_000 + i%distinctKeys)
					i++
					if literal {
						err = c.QueryRowContext(ctx, fmt.Sprintf("SELECT pg_try_advisory_lock(%d)", k)).Scan(&ok)
					} else {
						err = c.QueryRowContext(ctx, try, k).Scan(&ok)
					}
					if err != nil || !ok {
						b.Fatalf("try-lock = %v, %v", ok, err)
					}
					if literal {
						err = c.QueryRowContext(ctx, fmt.Sprintf("SELECT pg_advisory_unlock(%d)", k)).Scan(&ok)
					} else {
						err = c.QueryRowContext(ctx, unlock, k).Scan(&ok)
					}
					if err != nil || !ok {
						b.Fatalf("unlock = %v, %v", ok, err)
					}
				}
			})
		})
	}
}
