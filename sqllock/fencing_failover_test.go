package sqllock_test

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
)

// grantToken takes and releases an exclusive fenced lock on db and returns
// its token.
func grantToken(t *testing.T, db *sql.DB, name string) uint64 {
	t.Helper()
	m := sqllock.New(db, sqllock.WithFencing()).Mutex(name)
	require.NoError(t, m.Lock(t.Context()))
	tok, ok := m.Token()
	require.True(t, ok)
	require.NoError(t, m.Unlock(t.Context()))
	return tok
}

// grantTokens takes n fenced grants of name, on each of dbs in turn, and
// returns their tokens, which must grow.
func grantTokens(t *testing.T, dbs []*sql.DB, name string, n int) []uint64 {
	t.Helper()
	toks := make([]uint64, n)
	for i := range toks {
		toks[i] = grantToken(t, dbs[i%len(dbs)], name)
		if i > 0 {
			require.Greater(t, toks[i], toks[i-1], "grant %d on one server", i)
		}
	}
	return toks
}

// openDrivers opens dsn with lib/pq and with pgx.
func openDrivers(t *testing.T, dsn string) []*sql.DB {
	t.Helper()
	return []*sql.DB{faultOpen(t, "postgres", dsn), faultOpen(t, "pgx", dsn)}
}

// splitToken is a token's timeline and transaction id (sqllock's layout,
// fencing.go), for the logs.
func splitToken(tok uint64) (timeline, xid uint64) { return tok >> 47, tok & (1<<47 - 1) }

// nextXid returns the transaction id db's server hands out next, without
// taking one.
func nextXid(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	var n int64
	require.NoError(t, db.QueryRowContext(t.Context(), "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8").Scan(&n))
	return n
}

// waitReplayed waits until standby has replayed every WAL record primary
// has written so far.
func waitReplayed(t *testing.T, primary, standby *sql.DB) {
	t.Helper()
	var lsn string
	require.NoError(t, primary.QueryRowContext(t.Context(), "SELECT pg_current_wal_lsn()::text").Scan(&lsn))
	require.Eventually(t, func() bool {
		var done bool
		err := standby.QueryRowContext(t.Context(), "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&done)
		return err == nil && done
	}, 30*time.Second, 20*time.Millisecond, "the standby never replayed %s", lsn)
}

// freezeReplication stops standby's WAL receiver: it stays a standby but
// receives nothing more from primary.
func freezeReplication(t *testing.T, primary, standby *sql.DB) {
	t.Helper()
	_, err := standby.ExecContext(t.Context(), "ALTER SYSTEM SET primary_conninfo = ''")
	require.NoError(t, err)
	_, err = standby.ExecContext(t.Context(), "SELECT pg_reload_conf()")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		err := primary.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_stat_replication").Scan(&n)
		return err == nil && n == 0
	}, 30*time.Second, 20*time.Millisecond, "the standby is still connected")
}

// waitWritable waits until db's server has left recovery.
func waitWritable(t *testing.T, db *sql.DB) {
	t.Helper()
	require.Eventually(t, func() bool {
		var recovering bool
		return db.QueryRowContext(t.Context(), "SELECT pg_is_in_recovery()").Scan(&recovering) == nil && !recovering
	}, 30*time.Second, 20*time.Millisecond, "the server is still in recovery")
}

// promote stops primary at once (a crash) and promotes standby, which then
// answers writes.
func promote(t *testing.T, primary, standby *pgtest.Cluster) {
	t.Helper()
	out, err := primary.PGCtl(t, "stop", "-m", "immediate", "-w")
	require.NoError(t, err, "%s", out)
	out, err = standby.PGCtl(t, "promote", "-w")
	require.NoError(t, err, "%s", out)
}

// With synchronous replication, a commit waits for the standby, so a token
// handed out before a failover is known to the promoted standby, which
// hands out larger ones.
func TestFencingFailoverSynchronous(t *testing.T) {
	t.Parallel()
	primary := pgtest.NewCluster(t)
	standby := pgtest.NewStandby(t, primary)
	p := faultOpen(t, "postgres", primary.DSN())
	_, err := p.ExecContext(t.Context(), "ALTER SYSTEM SET synchronous_standby_names = '*'")
	require.NoError(t, err)
	_, err = p.ExecContext(t.Context(), "SELECT pg_reload_conf()")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		err := p.QueryRowContext(t.Context(), "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&n)
		return err == nil && n == 1
	}, 30*time.Second, 20*time.Millisecond, "the standby never became synchronous")

	var before uint64
	for range 5 {
		before = grantToken(t, p, t.Name())
	}
	promote(t, primary, standby)
	s := faultOpen(t, "pgx", standby.DSN())
	after := grantToken(t, s, t.Name())
	t.Logf("synchronous: last token on the old primary %d, first on the promoted standby %d", before, after)
	assert.Greater(t, after, before, "a synchronous standby must hand out larger tokens after the failover")
}

// Issue 24's scenario. With asynchronous replication a commit does not
// wait for the standby: the grants it never received are lost when the
// primary dies, and their transaction ids are handed out again by the
// server that takes over, a promoted standby or a restored backup. Both
// start a new timeline, which puts their tokens above every token of the
// old primary.
func TestFencingFailoverAsynchronous(t *testing.T) {
	t.Parallel()
	takeOvers := []struct {
		name string
		run  func(t *testing.T, standby *pgtest.Cluster, s *sql.DB)
	}{
		{"promote", func(t *testing.T, standby *pgtest.Cluster, _ *sql.DB) {
			out, err := standby.PGCtl(t, "promote", "-w")
			require.NoError(t, err, "%s", out)
		}},
		// The standby's data directory stands for a backup restored with
		// the WAL it has: an archive recovery that ends where that WAL
		// ends, as a restore to a point in time before the lost commits.
		{"restore", func(t *testing.T, standby *pgtest.Cluster, s *sql.DB) {
			_, err := s.ExecContext(t.Context(), "ALTER SYSTEM SET restore_command = 'false'")
			require.NoError(t, err)
			standby.Stop(t)
			dir := standby.Dir()
			require.NoError(t, os.Rename(filepath.Join(dir, "standby.signal"), filepath.Join(dir, "recovery.signal")))
			standby.Start(t)
		}},
	}
	for _, to := range takeOvers {
		t.Run(to.name, func(t *testing.T) {
			t.Parallel()
			primary := pgtest.NewCluster(t)
			standby := pgtest.NewStandby(t, primary)
			p := openDrivers(t, primary.DSN())
			s0 := faultOpen(t, "postgres", standby.DSN())

			replicated := grantTokens(t, p, t.Name(), 40)
			waitReplayed(t, p[0], s0)
			freezeReplication(t, p[0], s0)
			lost := grantTokens(t, p, t.Name(), 40)
			require.Greater(t, lost[0], replicated[len(replicated)-1])
			handedOut := nextXid(t, p[0])
			out, err := primary.PGCtl(t, "stop", "-m", "immediate", "-w")
			require.NoError(t, err, "%s", out)
			to.run(t, standby, s0)

			s := openDrivers(t, standby.DSN())
			waitWritable(t, s[0])
			after := grantTokens(t, s, t.Name(), 4)
			last := lost[len(lost)-1]
			lt, lx := splitToken(last)
			at, ax := splitToken(after[0])
			t.Logf("old primary: tokens %d..%d replicated, %d..%d lost, the last (timeline %d, xid %d)",
				replicated[0], replicated[len(replicated)-1], lost[0], last, lt, lx)
			t.Logf("after %s: first token %d (timeline %d, xid %d)", to.name, after[0], at, ax)
			require.Less(t, nextXid(t, s[0]), handedOut,
				"the server that took over must hand out again transaction ids the old primary handed out, or the test proves nothing")
			for i, tok := range after {
				assert.Greater(t, tok, last, "grant %d after the %s: tokens must stay above the old primary's", i, to.name)
			}
		})
	}
}

// fence is the fencing recipe's guard (docs/recipes.md, fencedStore): it
// remembers the largest token it has seen and refuses smaller ones.
type fence struct{ max uint64 }

func (f *fence) accept(tok uint64) bool {
	if tok < f.max {
		return false
	}
	f.max = tok
	return true
}

// Split brain: the standby is promoted while the old primary keeps
// serving, and both grant the lock. Fencing cannot prevent that, but it
// orders the two: every token of the promoted server's timeline is larger
// than every token of the old primary's, whatever their transaction ids,
// so a resource that has seen one refuses the old primary's from then on.
func TestFencingSplitBrain(t *testing.T) {
	t.Parallel()
	primary := pgtest.NewCluster(t)
	standby := pgtest.NewStandby(t, primary)
	p := openDrivers(t, primary.DSN())
	s0 := faultOpen(t, "postgres", standby.DSN())
	var f fence
	for _, tok := range grantTokens(t, p, t.Name(), 4) {
		require.True(t, f.accept(tok))
	}
	waitReplayed(t, p[0], s0)
	out, err := standby.PGCtl(t, "promote", "-w")
	require.NoError(t, err, "%s", out)
	s := openDrivers(t, standby.DSN())
	waitWritable(t, s[0])

	// Until the resource sees a token of the new timeline, the old
	// primary's are accepted: fencing orders writes, it elects no one.
	for _, tok := range grantTokens(t, p, t.Name(), 2) {
		require.True(t, f.accept(tok), "token %d of the old primary before any of the promoted server's", tok)
	}
	newer := grantTokens(t, s, t.Name(), 2)
	for _, tok := range newer {
		assert.True(t, f.accept(tok), "token %d of the promoted server", tok)
	}
	older := grantTokens(t, p, t.Name(), 10)
	require.Greater(t, nextXid(t, p[0]), nextXid(t, s[0]),
		"the old primary's transaction ids must overtake the promoted server's, or the test proves nothing")
	nt, nx := splitToken(newer[len(newer)-1])
	ot, ox := splitToken(older[len(older)-1])
	t.Logf("promoted server: token %d (timeline %d, xid %d); old primary afterwards: up to %d (timeline %d, xid %d)",
		newer[len(newer)-1], nt, nx, older[len(older)-1], ot, ox)
	for i, tok := range older {
		assert.Less(t, tok, newer[0], "grant %d on the old primary after the promotion", i)
		assert.False(t, f.accept(tok), "grant %d on the old primary after the promotion: token %d must be refused once %d was seen", i, tok, f.max)
	}
}
