package sqllock

import (
	"reflect"
	"sync"
	"weak"
)

// A sessionCache remembers, for each driver connection of the pool, the
// backend pid of the session that a checking lock statement verified on
// it (see buildQueries), so that later locks on that connection run the
// guarded form. A Locker has one.
//
// Entries are keyed by a weak reference to the driver connection, which
// neither keeps a closed connection alive nor matches a new connection
// that happens to be allocated at a closed one's address. Entries of
// connections that are gone are dropped as new ones arrive.
type sessionCache struct {
	mu    sync.RWMutex
	pids  map[weak.Pointer[byte]]int64
	limit int // prune when the map reaches this size
}

// lookup returns the pid verified on the driver connection ref, if any.
func (c *sessionCache) lookup(ref weak.Pointer[byte]) (int64, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	pid, ok := c.pids[ref]
	return pid, ok
}

// remember records pid as verified on the driver connection ref.
func (c *sessionCache) remember(ref weak.Pointer[byte], pid int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pids == nil {
		c.pids = make(map[weak.Pointer[byte]]int64)
	}
	if len(c.pids) >= c.limit {
		for r := range c.pids {
			if r.Value() == nil {
				delete(c.pids, r)
			}
		}
		c.limit = max(64, 2*len(c.pids))
	}
	c.pids[ref] = pid
}

// forget drops the entry of the driver connection ref if it still says
// pid: the connection's session is no longer that one.
func (c *sessionCache) forget(ref weak.Pointer[byte], pid int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pids[ref] == pid {
		delete(c.pids, ref)
	}
}

// connPointer returns driver connection dc as a pointer to its first byte,
// or nil if dc cannot be told apart from other connections by reference:
// it is not a pointer, or points to a value of size zero (which may share
// its address with other such values).
func connPointer(dc any) *byte {
	v := reflect.ValueOf(dc)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Type().Elem().Size() == 0 {
		return nil
	}
	return (*byte)(v.UnsafePointer())
}
