package settle

import (
	"context"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// End discards a connection whose session holds the lock and returns only
// once the server shows the lock gone; a pid of 0 (no lock statement ran)
// only discards.
func TestEndTerminatesHolder(t *testing.T) {
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.DB(t, driver)
			var forgot int
			s := Settler{DB: db, Timeout: 5 * time.Second, Forget: func(any) { forgot++ }}
			k := keyspace.SHA256Int64.Key(t.Name())
			n, _ := k.Int64()
			conn, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			var pid int64
			if err := conn.QueryRowContext(t.Context(), "SELECT pg_backend_pid() FROM pg_advisory_lock($1)", n).Scan(&pid); err != nil {
				t.Fatal(err)
			}
			if err := s.End(conn, pid, k); err != nil {
				t.Fatalf("End: %v", err)
			}
			c, o, sub := k.LockTag()
			var held int
			err = db.QueryRowContext(context.Background(), `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
				AND classid = $1 AND objid = $2 AND objsubid = $3`, int64(c), int64(o), int64(sub)).Scan(&held)
			if err != nil {
				t.Fatal(err)
			}
			if held != 0 || forgot != 1 {
				t.Fatalf("after End: %d holders in pg_locks, Forget called %d times; want 0, 1", held, forgot)
			}

			idle, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.End(idle, 0, k); err != nil {
				t.Fatalf("End with pid 0: %v", err)
			}
		})
	}
}
