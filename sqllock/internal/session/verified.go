package session

import (
	"context"
	"sync"
	"weak"

	"github.com/advisorylock/go-advisory-lock/sqllock/internal/drv"
	"github.com/advisorylock/go-advisory-lock/sqllock/internal/sqltext"
)

// A verifiedCache remembers, for each driver connection of the pool, the
// backend pid of the session that the verify statement (see sqltext.BuildVerify)
// verified on it, so that locks on that connection run the guarded form
// at once. A Manager has one.
//
// Entries are keyed by a weak reference to the driver connection, which
// neither keeps a closed connection alive nor matches a new connection
// that happens to be allocated at a closed one's address. When the driver
// connection is a wrapper or a pool bridge's per-checkout connection (see
// drv.SessionOwner), the object that owns the session is remembered too, so
// that the next wrapper over the same session finds it. Entries of
// connections that are gone are dropped as new ones arrive.
type verifiedCache struct {
	mu      sync.RWMutex
	entries map[weak.Pointer[byte]]verifiedEntry
	limit   int // prune when the map reaches this size
}

type verifiedEntry struct {
	pid   int64
	owner weak.Pointer[byte] // the session's owner, when it is not the key itself
}

// lookup returns the pid verified on the driver connection ref, if any.
func (c *verifiedCache) lookup(ref weak.Pointer[byte]) (int64, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.entries[ref]
	return e.pid, ok
}

// remember records pid as verified on the driver connection ref, whose
// session's owner is owner (the zero reference when ref is its own).
func (c *verifiedCache) remember(ref, owner weak.Pointer[byte], pid int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[weak.Pointer[byte]]verifiedEntry)
	}
	if len(c.entries) >= c.limit {
		for r := range c.entries {
			if r.Value() == nil {
				delete(c.entries, r)
			}
		}
		c.limit = max(64, 2*len(c.entries))
	}
	c.entries[ref] = verifiedEntry{pid: pid, owner: owner}
	if owner != (weak.Pointer[byte]{}) {
		c.entries[owner] = verifiedEntry{pid: pid}
	}
}

// forget drops the entry of the driver connection ref, and of its
// session's owner, if it still says pid: the connection's session is no
// longer that one.
func (c *verifiedCache) forget(ref weak.Pointer[byte], pid int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[ref]
	if !ok || e.pid != pid {
		return
	}
	delete(c.entries, ref)
	if o, ok := c.entries[e.owner]; ok && e.owner != (weak.Pointer[byte]{}) && o.pid == pid {
		delete(c.entries, e.owner)
	}
}

// drop forgets driver connection dc and its session's owner, whose
// session is being ended.
func (c *verifiedCache) drop(dc any) {
	p := drv.ConnPointer(dc)
	refs := []*byte{p}
	if op := drv.ConnPointer(drv.SessionOwner(dc)); op != p {
		refs = append(refs, op)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range refs {
		if p != nil {
			delete(c.entries, weak.Make(p))
		}
	}
}

// guarded returns lock statement q's guarded form for the session of
// driver connection dc, verifying that session first unless this Manager
// already did. A session the verify statement refuses yields no statement
// and the refusal's flags (sqltext.FlagStandby, sqltext.FlagForeign,
// sqltext.FlagStub), or a pooler's session (sqltext.FlagProxied). pid is
// the session's backend pid once known, even with an error; 0 for a
// pooler's session, which no statement of this connection's holds.
func (m *Manager) guarded(ctx context.Context, dc any, q *sqltext.LockStmt, c *sqltext.Cache) (g *sqltext.Guarded, pid, flags int64, err error) {
	p := drv.ConnPointer(dc)
	var ref, owner weak.Pointer[byte]
	if p != nil {
		if g := q.Cached(c, p); g != nil {
			return g, g.PID, 0, nil
		}
		ref = weak.Make(p)
		if pid, ok := m.verified.lookup(ref); ok {
			if pid == proxiedPID {
				return nil, 0, sqltext.FlagProxied, nil
			}
			return q.GuardedFor(c, p, ref, pid), pid, 0, nil
		}
	}
	o := drv.SessionOwner(dc)
	if op := drv.ConnPointer(o); op != nil && op != p {
		owner = weak.Make(op)
		if pid, ok := m.verified.lookup(owner); ok && p != nil && pid != proxiedPID {
			// A new wrapper over a session verified before.
			m.verified.remember(ref, owner, pid)
			return q.GuardedFor(c, p, ref, pid), pid, 0, nil
		}
	}
	text, args := m.verify.Statement(sqltext.ConnAddr(o))
	v, err := drv.QueryValue(ctx, dc, text, args)
	var n int64
	if err == nil {
		n, err = lockAnswer(v)
	}
	if err != nil {
		return nil, 0, 0, err
	}
	pid, flags = n>>sqltext.AnswerShift, n&(sqltext.FlagStandby|sqltext.FlagForeign|sqltext.FlagStub)
	if flags&^sqltext.FlagForeign == 0 {
		if startup, ok := drv.StartupPID(dc); ok && startup != pid {
			// A pooler's session: another client's mark on it is no
			// refusal, since its locks are held in a transaction. Its pid
			// is no one's to settle: the pooler hands it to any client.
			if err := m.checkHeld(ctx, dc); err != nil {
				return nil, 0, 0, err
			}
			m.pooled.Store(true)
			if p != nil {
				m.verified.remember(ref, owner, proxiedPID)
			}
			return nil, 0, sqltext.FlagProxied, nil
		}
	}
	if flags != 0 {
		return nil, pid, flags, nil
	}
	if p != nil {
		m.verified.remember(ref, owner, pid)
	}
	return q.GuardedFor(c, p, ref, pid), pid, 0, nil
}
