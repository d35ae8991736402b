package settle

import (
	"context"
	"strconv"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
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

// EndMarked ends the session whose last query is a held try with its mark
// while that try's transaction is open, and leaves alone a session that ran
// the marked try and went idle since (behind a pooler it serves others
// then), and sessions that EndTx does not name (another transaction of
// the same backend).
func TestEndMarkedAndEndTx(t *testing.T) {
	for _, driver := range []string{"postgres", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			db := pgtest.DB(t, driver)
			s := Settler{DB: db, Timeout: 5 * time.Second, Forget: func(any) {}}
			k := keyspace.SHA256Int64.Key(t.Name())
			n, _ := k.Int64()
			held := func() int {
				c, o, sub := k.LockTag()
				var rows int
				if err := db.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = $3",
					int64(c), int64(o), int64(sub)).Scan(&rows); err != nil {
					t.Fatal(err)
				}
				return rows
			}
			// A marked try whose transaction stays open: ended.
			open, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			mark := sqltext.NewMark()
			try := "SELECT (pg_backend_pid()::int8*2 + pg_try_advisory_xact_lock(" + strconv.FormatInt(n, 10) + ")::int)::text || ' ' || " + sqltext.XactStart
			if _, err := open.ExecContext(t.Context(), sqltext.Marked(mark, try, true)); err != nil {
				t.Fatal(err)
			}
			if held() != 1 {
				t.Fatal("the marked try's transaction does not hold the lock")
			}
			// A marked try that went idle (no BEGIN: its transaction ended):
			// left alone.
			idle, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer idle.Close()
			idleMark := sqltext.NewMark()
			if _, err := idle.ExecContext(t.Context(), sqltext.Marked(idleMark, "SELECT 1", false)); err != nil {
				t.Fatal(err)
			}
			if err := s.EndMarked(open, mark); err != nil {
				t.Fatalf("EndMarked: %v", err)
			}
			if n := held(); n != 0 {
				t.Fatalf("pg_locks shows %d rows of the lock after EndMarked returned", n)
			}
			if err := s.EndMarked(idle, idleMark); err != nil {
				t.Fatalf("EndMarked of an idle session: %v", err)
			}

			// EndTx names one transaction: a later one on the same backend,
			// holding the same key, is left alone.
			conn, err := db.Conn(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var answer string
			// pgx runs a query of several statements in its simple protocol only.
			var simple []any
			_ = conn.Raw(func(dc any) error {
				if v := drv.SimpleProtocol(dc); v != nil {
					simple = []any{v}
				}
				return nil
			})
			if err := conn.QueryRowContext(t.Context(), sqltext.Marked(sqltext.NewMark(), try, true), simple...).Scan(&answer); err != nil {
				t.Fatal(err)
			}
			pid, granted, tx, err := sqltext.HeldAnswer(answer)
			if err != nil || !granted {
				t.Fatalf("held try answered %q: %v", answer, err)
			}
			if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
				t.Fatal(err)
			}
			if err := conn.QueryRowContext(t.Context(), sqltext.Marked(sqltext.NewMark(), try, true), simple...).Scan(&answer); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			if err := s.TerminateTx(ctx, pid, tx, k); err != nil {
				t.Fatalf("TerminateTx of a transaction that ended: %v", err)
			}
			if held() != 1 {
				t.Fatal("TerminateTx ended a later transaction of the same backend")
			}
			if _, err := conn.ExecContext(t.Context(), "ROLLBACK"); err != nil {
				t.Fatalf("the later transaction's session was ended: %v", err)
			}
		})
	}
}
