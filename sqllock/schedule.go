package sqllock

import (
	"sync"
	"time"
)

// A scheduler runs the timed work of a Locker's sessions on one timer:
// each session's next keep-alive probe, and the bound of each release
// whose context never ends.
//
// One timer, not one per hold, because arming a timer is not free on a
// lock's hot path: when the goroutine's P has no earlier timer, the Go
// runtime wakes a thread to watch the new one, which costs a futex wake-up
// per Lock (measured: about 8% of the client's CPU per Lock+Unlock with
// pgx). The shared timer stays armed across locks, so a program that takes
// and releases locks in a loop re-arms it about once per keep-alive
// interval instead.
//
// Times are offsets from the scheduler's base, read from the monotonic
// clock only (time.Since), which costs one clock read where time.Now costs
// two: the lock path reads it twice per Lock+Unlock.
type scheduler struct {
	base time.Time // set before first use (see New); due times are offsets from it

	mu    sync.Mutex
	holds []*session    // scheduled sessions, each at holds[h.slot]
	timer *time.Timer   // made on first use; runs fire
	at    time.Duration // when timer fires, if armed
	armed bool
}

// now returns the scheduler's time: the time elapsed since its base.
func (s *scheduler) now() time.Duration { return time.Since(s.base) }

// What a scheduled session is waiting for.
const (
	dueProbe   = iota + 1 // its next keep-alive probe
	dueRelease            // the end of its release's bound
)

// after sets h's single entry to run kind after delay d, replacing any
// entry it had.
func (s *scheduler) after(h *session, d time.Duration, kind int) {
	s.schedule(h, s.now()+d, kind)
}

// schedule sets h's single entry to run kind at due (see scheduler.now),
// replacing any entry it had. The caller must not hold s.mu.
func (s *scheduler) schedule(h *session, due time.Duration, kind int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set(h, due, kind)
}

// set is schedule with s.mu held.
func (s *scheduler) set(h *session, due time.Duration, kind int) {
	h.due, h.dueKind = due, kind
	if h.slot < 0 {
		h.slot = len(s.holds)
		s.holds = append(s.holds, h)
	}
	if !s.armed || due < s.at {
		s.arm(due)
	}
}

// atLatest makes h's entry run by due at the latest: it sets one to run a
// probe then unless h has an entry due no later. A probe is also a shared
// session's watchdog (see session.watchdog).
func (s *scheduler) atLatest(h *session, due time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.slot < 0 || h.due > due {
		s.set(h, due, dueProbe)
	}
}

// cancel removes h's entry, if it has one.
func (s *scheduler) cancel(h *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.slot >= 0 {
		s.drop(h.slot)
	}
}

// drop removes the entry at slot i, moving the last entry into its place.
func (s *scheduler) drop(i int) {
	h := s.holds[i]
	last := len(s.holds) - 1
	s.holds[i] = s.holds[last]
	s.holds[i].slot = i
	s.holds[last] = nil
	s.holds = s.holds[:last]
	h.slot = -1
}

func (s *scheduler) arm(at time.Duration) {
	s.at, s.armed = at, true
	if s.timer == nil {
		s.timer = time.AfterFunc(at-s.now(), s.fire)
		return
	}
	s.timer.Reset(at - s.now())
}

// fire starts every entry that is due, each in its own goroutine (a probe
// may wait for as long as the keep-alive timeout), and re-arms the timer
// for the earliest entry left. A fire with nothing due (the timer was
// re-armed meanwhile, or the holds it was armed for are gone) only
// re-arms.
func (s *scheduler) fire() {
	s.mu.Lock()
	now := s.now()
	s.armed = false
	var next time.Duration
	found := false
	for i := 0; i < len(s.holds); {
		h := s.holds[i]
		if h.due > now {
			if !found || h.due < next {
				next, found = h.due, true
			}
			i++
			continue
		}
		s.drop(i)
		go h.run(h.dueKind)
	}
	if found {
		s.arm(next)
	}
	s.mu.Unlock()
}
