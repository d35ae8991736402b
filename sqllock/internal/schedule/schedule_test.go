package schedule

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// task records its runs.
type task struct {
	e   Entry
	run func(kind int)
}

func (t *task) Entry() *Entry { return &t.e }
func (t *task) Run(kind int)  { t.run(kind) }

// The scheduler runs each entry once, at or after its time, in time order
// for entries far enough apart; a cancelled entry never runs; a
// rescheduled one runs at its new time only.
func TestScheduler(t *testing.T) {
	var s Scheduler[*task]
	s.Start(time.Now())
	var mu sync.Mutex
	var ran []string
	done := make(chan struct{}, 8)
	entry := func(name string) *task {
		return &task{run: func(int) {
			mu.Lock()
			ran = append(ran, name)
			mu.Unlock()
			done <- struct{}{}
		}}
	}
	start := time.Now()
	at := s.Now()
	a, b, c, d := entry("a"), entry("b"), entry("c"), entry("d")
	s.Schedule(c, at+60*time.Millisecond, 2)
	s.Schedule(a, at+20*time.Millisecond, 2)
	s.After(b, 40*time.Millisecond, 2)
	s.Schedule(d, at+30*time.Millisecond, 2)
	s.Cancel(b)
	s.Schedule(d, at+80*time.Millisecond, 2) // moved, not added twice
	for range 3 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("an entry did not run")
		}
	}
	assert.GreaterOrEqual(t, time.Since(start), 80*time.Millisecond)
	select {
	case <-done:
		t.Fatal("an entry ran twice, or a cancelled one ran")
	case <-time.After(50 * time.Millisecond):
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{"a", "c", "d"}, ran)
	assert.Zero(t, s.Len())
}
