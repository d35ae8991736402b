package session

import (
	"database/sql/driver"
	"sync/atomic"
	"weak"

	"github.com/advisorylock/go-advisory-lock/keyspace"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A Target is one lock's key and statements, as a Mutex keeps them and
// hands them down with each request. Set it up with Manager.Init; its
// statements are the Manager's for every key of its kind, its arguments
// its own.
type Target struct {
	Name  string // for errors and observers only: it never reaches SQL
	Key   keyspace.Key
	Q     *sqltext.Queries // the Manager's statements for keys of this kind, or this key's own (literals)
	Args  []any            // the key as Q's arguments; nil with literals
	named []driver.NamedValue
	m     *Manager
	cache [2][sqltext.KindCount]sqltext.Cache // each lock statement's guarded form, as last made: of Q, of literal()
	lit   atomic.Pointer[sqltext.Queries]     // Q with the key written in (see literal)
	heldQ atomic.Pointer[sqltext.Held]        // the statements of the lock held in a transaction (see held)
}

// Init sets t up for the lock called name (empty for an explicit key)
// with key k.
func (m *Manager) Init(t *Target, name string, k keyspace.Key) {
	t.Name, t.Key, t.m = name, k, m
	if !m.placeholders {
		t.Q = m.build(k, false)
		return
	}
	// With the key as parameters, the texts are the same for every key of
	// a kind: the Target keeps only its arguments.
	kind := 0
	if _, ok := k.Int64(); !ok {
		kind = 1
	}
	if t.Q = m.texts[kind].Load(); t.Q == nil {
		q := m.build(k, true)
		q.Args, q.Named = nil, nil
		m.texts[kind].CompareAndSwap(nil, q)
		t.Q = m.texts[kind].Load()
	}
	t.Args = sqltext.KeyArgs(k)
	t.named = drv.Named(t.Args)
}

// build returns the statements for key k, fenced if the Manager fences.
func (m *Manager) build(k keyspace.Key, placeholders bool) *sqltext.Queries {
	q := sqltext.Build(k, placeholders)
	if m.cfg.Fencing {
		q.Fence()
	}
	if m.cfg.Lease > 0 {
		q.Lease(m.cfg.Lease)
	}
	return &q
}

// literal returns t's queries with the key written into the text, for a
// Manager that prepares its statements (see drv.StmtCache) on a session
// it may not prepare on: a simple query, one round trip, nothing named.
// Made on first use.
func (t *Target) literal() *sqltext.Queries {
	if q := t.lit.Load(); q != nil {
		return q
	}
	if t.Args == nil {
		return t.Q // its own: built with literals
	}
	t.lit.CompareAndSwap(nil, t.m.build(t.Key, false))
	return t.lit.Load()
}

// unlockStatement returns the unlock statement and its arguments for a
// lock taken in the given form (prepared: see drv.StmtCache) on driver
// connection dc, in the form guarded for its session, backend pid; last
// says that the session carries no other lock, and gets its setting back
// (see sqltext.LeaseOff).
func (t *Target) unlockStatement(shared, prepared, last bool, dc any, pid int64) (string, []driver.NamedValue) {
	q, args, form := t.Q, t.named, 0
	if t.m.prepared && !prepared {
		q, args, form = t.literal(), nil, 1
	}
	var s *sqltext.LockStmt
	switch {
	case shared && last:
		s = q.UnlockShared
	case shared:
		s = q.UnlockSharedKeep
	case last:
		s = q.Unlock
	default:
		s = q.UnlockKeep
	}
	c, p := &t.cache[form][s.Kind], drv.ConnPointer(dc)
	if g := s.Cached(c, p); g != nil && g.PID == pid {
		return g.Text, args
	}
	var ref weak.Pointer[byte]
	if p != nil {
		ref = weak.Make(p)
	}
	return s.GuardedFor(c, p, ref, pid).Text, args
}

// fail makes the error of operation op on t's lock (see Config.Fail).
func (t *Target) fail(op string, err error) error {
	return t.m.cfg.Fail(op, t, err)
}
