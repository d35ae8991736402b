package sqllock

import (
	"context"
	"time"
)

// Leadership is where an election stands, as the server shows it,
// whichever process leads.
type Leadership struct {
	// State is ElectionLeading when Leader leads (its fn runs, or it is
	// checking its predecessor's handover, a few round trips),
	// ElectionWaiting when Leader has won and waits out the takeover
	// delay, and ElectionIdle when no one holds the election's lock.
	State ElectionState

	// Leader is the session that holds the election's lock, unless
	// State is ElectionIdle.
	Leader Holder

	// Followers are the sessions waiting for the lock, in the order they
	// began waiting: the other candidates.
	Followers []Holder

	// Err is set only in what Observe sends: the server could not be
	// asked; the other fields are the last known. The next look is one
	// keep-alive interval later.
	Err error
}

// Leadership reports where the election stands, as the server shows it:
// who holds the election's lock, whether that leader leads or is still
// waiting out its takeover delay, and who waits. Seeing other users'
// application_name and client address needs the pg_read_all_stats role
// (see [Mutex.Holders]). ctx bounds the queries, two round trips.
//
// A leader waiting out its delay is told apart through a lock it holds
// meanwhile; a process of a version without it, or whose pool has no
// room for it (see [Election.Run]), shows as leading.
func (e *Election) Leadership(ctx context.Context) (Leadership, error) {
	hs, err := e.m.Holders(ctx)
	if err != nil {
		return Leadership{}, err
	}
	var ld Leadership
	for _, h := range hs {
		switch {
		case !h.Granted:
			ld.Followers = append(ld.Followers, h)
		case !h.Shared && ld.State == ElectionIdle:
			ld.State, ld.Leader = ElectionLeading, h
		}
	}
	if ld.State == ElectionLeading && e.handover {
		rows, err := e.look(ctx, e.waitingKey)
		if err != nil {
			return Leadership{}, e.m.fail("leadership", err)
		}
		for _, r := range rows[0] {
			if r.granted {
				ld.State = ElectionWaiting
			}
		}
	}
	return ld, nil
}

// Leader reports who leads now, as the server sees it: the session that
// holds the election's lock and leads, with its pid, application_name and
// client address. ok is false when no one leads, including while the
// candidate that won waits out its takeover delay: [Election.Leadership]
// tells those apart. ctx bounds the queries. To tell leaders apart by
// name, give each process's pool its own application_name (in the
// connection string, or pgx's RuntimeParams), as withlock does with
// "withlock:<lock name>".
func (e *Election) Leader(ctx context.Context) (leader Holder, ok bool, err error) {
	ld, err := e.Leadership(ctx)
	if err != nil || ld.State != ElectionLeading {
		return Holder{}, false, err
	}
	return ld.Leader, true, nil
}

// Observe reports the election's leadership as it changes: the current
// [Leadership] at once, then a new one whenever the leader or its state
// changes, until ctx ends, when the channel is closed.
//
// Observing takes no lock and runs no statement the candidates wait for:
// it never delays nor blocks them. It asks the server once per keep-alive
// interval of the Locker (see [WithKeepAlive]; 2s by default), and at
// once when this Election's own state changes (a Run of it in this
// process). A reader that falls behind gets the latest value: the channel
// holds one, replaced by newer ones. A query that fails is sent with Err
// set, once, and retried at the next interval.
func (e *Election) Observe(ctx context.Context) <-chan Leadership {
	ch := make(chan Leadership, 1)
	if ctx == nil || e.m.err != nil {
		err := e.m.fail("observe", ErrNilContext)
		if ctx != nil {
			err = e.m.fail("observe", e.m.err)
		}
		ch <- Leadership{Err: err}
		close(ch)
		return ch
	}
	wake := make(chan struct{}, 1)
	e.mu.Lock()
	if e.watchers == nil {
		e.watchers = make(map[chan struct{}]struct{})
	}
	e.watchers[wake] = struct{}{}
	e.mu.Unlock()
	interval := e.l.cfg.interval
	if interval <= 0 {
		interval = DefaultKeepAliveInterval
	}
	go func() {
		defer close(ch)
		defer func() {
			e.mu.Lock()
			delete(e.watchers, wake)
			e.mu.Unlock()
		}()
		var last Leadership
		sent := false
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-wake:
				t.Stop()
			}
			qctx, cancel := context.WithTimeout(ctx, e.l.cfg.timeout)
			ld, err := e.Leadership(qctx)
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				ld = last
				ld.Err = err
			}
			if !sent || changed(last, ld) {
				select {
				case ch <- ld:
				default:
					select { // replace the value the reader has not taken
					case <-ch:
					default:
					}
					ch <- ld
				}
				sent, last = true, ld
			}
			t.Reset(interval)
		}
	}()
	return ch
}

// changed reports whether b tells of another leader, state or failure
// than a.
func changed(a, b Leadership) bool {
	return a.State != b.State || a.Leader.PID != b.Leader.PID ||
		!a.Leader.BackendStart.Equal(b.Leader.BackendStart) || (a.Err == nil) != (b.Err == nil)
}
