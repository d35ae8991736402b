package sqllock

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/errs"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/session"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// The clean handover: a new leader skips the takeover delay when its
// predecessor's fn has returned, as the server shows. Beside the
// election's lock K, two locks, named after the election:
//
//   - evidence Y, held exclusively by a leader that stepped down cleanly,
//     taken right after the server showed its session holding K; a new
//     leader that finds it starts at once. Every new leader first waits for Y to be free (its barrier,
//     in shared mode, which no one takes for evidence), so that evidence
//     never outlives the term it speaks of.
//   - waiting W, held by a leader while it waits out the delay, so that
//     other processes can tell it from one that leads (Leadership).
//
// docs/design.md ("Election handover") has the argument and its limits.
const (
	evidenceSuffix = "\x00sqllock/election/handover"
	waitingSuffix  = "\x00sqllock/election/waiting"
)

// initHandover names the handover's locks after the election name. A
// strategy that cannot key those names, or gives two of them one key, gets
// no handover: every new leader waits the delay.
func (e *Election) initHandover(name string) {
	if e.m.err != nil {
		return
	}
	keys := []keyspace.Key{e.m.t.Key}
	for _, suffix := range []string{evidenceSuffix, waitingSuffix} {
		k, err := keyFor(e.l.cfg.strategy, name+suffix)
		if err != nil {
			return
		}
		for _, other := range keys {
			if k == other {
				return
			}
		}
		keys = append(keys, k)
	}
	e.evidenceKey, e.waitingKey = keys[1], keys[2]
	e.handover = true
}

// A campaign is one Run's mutexes, so that the grants they hold are this
// Run's, and what it knows of its current term.
type campaign struct {
	e                 *Election
	k                 *Mutex // the election's lock
	evidence, waiting *Mutex // nil without the handover

	on       bool      // this term takes part in the handover
	pid      int64     // the backend that holds k this term
	start    time.Time // its backend_start: a later backend may get its pid
	marked   bool      // waiting is held
	handing  bool      // evidence is held, for the successor: see handOver
	stepping time.Time // when stepDown began, for handOver's bound
}

func (e *Election) newCampaign() *campaign {
	name := e.m.t.Name
	c := &campaign{e: e, k: e.l.Mutex(name)}
	if e.handover {
		c.evidence = e.l.helperMutex(e.evidenceKey, name+" (election handover)")
		c.waiting = e.l.helperMutex(e.waitingKey, name+" (election waiting)")
	}
	return c
}

// helperMutex returns a Mutex for key k that errors and observers call
// label.
func (l *Locker) helperMutex(k keyspace.Key, label string) *Mutex {
	m := l.MutexKey(k)
	m.t.Name = label
	return m
}

// roomForHandover reports whether db can give the handover the two
// connections it may use beside the lock's own.
func roomForHandover(db *sql.DB) bool {
	n := db.Stats().MaxOpenConnections
	return n <= 0 || n >= 3
}

// warm leaves two connections idle in the pool, each with the look run
// once, for the lock and the look that follow a won campaign, so that a
// clean handover waits for no dial. It costs a round trip or two per
// campaign, and nothing without the handover.
func (c *campaign) warm(ctx context.Context) {
	if !c.e.handover || c.e.delay <= 0 || !roomForHandover(c.e.l.db) {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, c.e.l.cfg.timeout)
	defer cancel()
	for range 2 {
		conn, err := c.e.l.db.Conn(wctx)
		if err != nil {
			return
		}
		defer conn.Close()
		rows, err := conn.QueryContext(wctx, lookQuery(c.k.t.Key, c.evidence.t.Key))
		if err != nil {
			return
		}
		_ = rows.Close()
	}
}

// prepare runs when this Run has won the lock, before fn: it returns
// true when fn may run. With a clean predecessor it returns at once;
// otherwise after the takeover delay. It returns false when ctx ends (the
// lock lost, Run's ctx ended) or the server shows the lock held by another
// session, and an error when a step it needs failed.
func (c *campaign) prepare(ctx context.Context) (bool, error) {
	e := c.e
	if e.delay <= 0 {
		return true, nil
	}
	e.setState(ElectionWaiting)
	c.on, c.pid, c.start = false, 0, time.Time{}
	if g := c.k.scopedGrant(); e.handover && g != nil && roomForHandover(e.l.db) {
		c.on, c.pid = true, g.PID()
	}
	if c.on {
		clean, err := c.check(ctx)
		if err == nil && clean {
			held, err := c.barrier(ctx)
			switch {
			case err == nil:
				return held, nil
			case ctx.Err() != nil:
				return false, nil
			}
			// The barrier or the look failed: wait the delay.
		}
	}
	t := time.NewTimer(e.delay)
	defer t.Stop()
	e.logDelay()
	if c.on {
		c.markWaiting(ctx)
		defer c.unmarkWaiting()
	}
	select {
	case <-ctx.Done():
		return false, nil
	case <-t.C:
	}
	if !c.on {
		return true, nil
	}
	c.unmarkWaiting()
	held, err := c.barrier(ctx)
	if err != nil && ctx.Err() == nil {
		return false, c.k.fail("election", fmt.Errorf("waiting for the handover's evidence to be released: %w", err))
	}
	return held, nil
}

// check looks for a clean predecessor's evidence, and records the
// backend_start of this term's session. ctx and the keep-alive timeout
// bound it: a server or pool that does not answer means a delay.
func (c *campaign) check(ctx context.Context) (clean bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, c.e.l.cfg.timeout)
	defer cancel()
	rows, err := c.e.look(cctx, c.k.t.Key, c.evidence.t.Key)
	if err != nil {
		return false, err
	}
	for _, r := range rows[0] {
		if r.granted && r.exclusive && r.pid == c.pid {
			c.start = r.start
		}
	}
	if c.start.IsZero() { // the server does not show this Run's session holding it
		return false, nil
	}
	for _, r := range rows[1] {
		if r.granted && r.exclusive {
			return true, nil
		}
	}
	return false, nil
}

// barrier waits until no evidence is held, then checks that this term's
// session still holds the lock: held is false when the server shows it
// held elsewhere (or not at all), and fn must not run. The barrier is a
// shared lock, which no look takes for evidence.
func (c *campaign) barrier(ctx context.Context) (held bool, err error) {
	if err := c.evidence.LockShared(ctx); err != nil {
		return false, err
	}
	_ = c.evidence.UnlockShared(context.WithoutCancel(ctx)) // a shared hold left behind is no evidence
	rows, err := c.e.look(ctx, c.k.t.Key)
	if err != nil {
		return false, err
	}
	return heldBy(rows[0], c.pid, c.start), nil
}

// markWaiting takes the waiting lock, if it can at once, so that other
// processes see this leader as waiting (Leadership).
func (c *campaign) markWaiting(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, c.e.l.cfg.timeout)
	defer cancel()
	ok, err := c.waiting.TryLock(wctx)
	c.marked = ok && err == nil
}

func (c *campaign) unmarkWaiting() {
	if c.marked {
		c.marked = false
		_ = c.waiting.Unlock(context.Background())
	}
}

// stepDown runs when fn has returned and this Run still holds the lock,
// before it releases it. If the lock was not lost and
// another candidate waits for it, stepDown leaves evidence for that
// successor: it makes sure, on the server, that this term's session holds
// the lock, then takes the evidence lock. Evidence granted later than half
// the takeover delay after that look (a stall) is let go at once: a
// successor that did not see it may have waited the delay and started.
// stepDown does not depend on ctx, which may have ended (a shutdown): the
// keep-alive timeout bounds it.
func (c *campaign) stepDown(ctx context.Context) {
	c.handing = false
	c.stepping = time.Now()
	if !c.on || c.start.IsZero() || errors.Is(context.Cause(ctx), ErrLockLost) {
		return
	}
	if g := c.k.scopedGrant(); g == nil || g.Err() != nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.e.l.cfg.timeout)
	defer cancel()
	asked := time.Now()
	rows, err := c.e.look(sctx, c.k.t.Key)
	if err != nil || !heldBy(rows[0], c.pid, c.start) || waiters(rows[0]) == 0 {
		return
	}
	if ok, err := c.evidence.TryLock(sctx); err != nil || !ok {
		return
	}
	if time.Since(asked) < c.e.delay/2 {
		c.handing = true
		return
	}
	_ = c.evidence.Unlock(context.WithoutCancel(ctx))
}

// handOver runs once the lock is released: if stepDown left evidence, it
// waits until the successor's barrier waits for it, which the successor
// reaches only once it has looked, then lets it go. The wait is bounded by
// the keep-alive timeout and half the takeover delay, counted from the
// step-down, so that evidence is gone before a leader that did not look
// (a candidate that waited the delay) could start.
func (c *campaign) handOver() {
	if !c.handing {
		return
	}
	c.handing = false
	bound := min(c.e.l.cfg.timeout, c.e.delay/2)
	ctx, cancel := context.WithDeadline(context.Background(), c.stepping.Add(bound))
	defer cancel()
	for wait := time.Millisecond; ; wait = min(2*wait, 5*time.Millisecond) {
		if rows, err := c.e.look(ctx, c.evidence.t.Key); err == nil && waiters(rows[0]) > 0 {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
		case <-t.C:
			continue
		}
		t.Stop()
		break
	}
	_ = c.evidence.Unlock(context.Background())
}

// scopedGrant returns the lock m holds through WithLock, when it holds
// exactly one.
func (m *Mutex) scopedGrant() *session.Grant {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.scoped) != 1 {
		return nil
	}
	return m.scoped[0]
}

// A lockRow is a session holding or waiting for an advisory lock.
type lockRow struct {
	pid       int64
	granted   bool
	exclusive bool
	start     time.Time // the session's backend_start; zero if not shown
}

// heldBy reports whether rows show the lock held exclusively by backend
// pid, begun at start (unless start is zero).
func heldBy(rows []lockRow, pid int64, start time.Time) bool {
	for _, r := range rows {
		if r.granted && r.exclusive && r.pid == pid && (start.IsZero() || r.start.Equal(start)) {
			return true
		}
	}
	return false
}

// waiters counts the sessions waiting in rows.
func waiters(rows []lockRow) int {
	n := 0
	for _, r := range rows {
		if !r.granted {
			n++
		}
	}
	return n
}

// lookSQL lists the sessions that hold or wait for the advisory locks
// given as lock tags ($1-$3, $4-$6, ...), in one snapshot of pg_locks.
func lookSQL(n int) string {
	var b strings.Builder
	b.WriteString(`SELECT l.classid::int8, l.objid::int8, l.objsubid::int8, COALESCE(l.pid, 0), l.granted, l.mode = 'ExclusiveLock', a.backend_start
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND (`)
	for i := range n {
		if i > 0 {
			b.WriteString(" OR ")
		}
		fmt.Fprintf(&b, "(l.classid = $%d AND l.objid = $%d AND l.objsubid = $%d)", 3*i+1, 3*i+2, 3*i+3)
	}
	b.WriteString(")")
	return b.String()
}

var lookSQLs = [...]string{1: lookSQL(1), 2: lookSQL(2)}

// lookQuery returns lookSQL for keys, with their lock tags written in
// (see sqltext.Literal): behind a transaction pooler, lib/pq's two round
// trips for a query with parameters could reach two server sessions.
func lookQuery(keys ...keyspace.Key) string {
	args := make([]int64, 0, 3*len(keys))
	for _, k := range keys {
		c, o, s := k.LockTag()
		args = append(args, int64(c), int64(o), int64(s))
	}
	return sqltext.Literal(lookSQLs[len(keys)], args...)
}

// look returns, for each of keys, the sessions that hold or wait for it.
func (e *Election) look(ctx context.Context, keys ...keyspace.Key) ([][]lockRow, error) {
	rows, err := e.l.db.QueryContext(ctx, lookQuery(keys...))
	if err != nil {
		return nil, errs.WithCtxErr(ctx, err)
	}
	defer rows.Close()
	out := make([][]lockRow, len(keys))
	for rows.Next() {
		var c, o, s int64
		var r lockRow
		var start sql.NullTime
		if err := rows.Scan(&c, &o, &s, &r.pid, &r.granted, &r.exclusive, &start); err != nil {
			return nil, err
		}
		r.start = start.Time
		for i, k := range keys {
			if kc, ko, ks := k.LockTag(); int64(kc) == c && int64(ko) == o && int64(ks) == s {
				out[i] = append(out[i], r)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, errs.WithCtxErr(ctx, err)
	}
	return out, nil
}
