package sqllock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
	"github.com/advisorylock/go-advisory-lock/sqllock"
	"github.com/stretchr/testify/assert"
)

// Semaphore processes: semWorkers goroutines each make semAcquires
// acquisitions of a semSlots-slot semaphore, every third under a short
// deadline, holding each slot for semHold.
const (
	semSlots    = 3
	semWorkers  = 2
	semAcquires = 15
	semHold     = 20 * time.Millisecond
)

// runSemWorker is a semaphore process (see TestSemaphoreProcesses): it
// prints "acq G T W" when goroutine G got a slot at T (unix ns) after
// waiting W (ns), "rel G T" before releasing it, "timeout G" for a short
// deadline that ended first, "err G E" for anything else, and "done" at the
// end.
func runSemWorker(db *sql.DB, name string) {
	db.SetMaxOpenConns(8)
	sem := sqllock.New(db).Semaphore(name, semSlots)
	var mu sync.Mutex
	say := func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(f+"\n", a...)
	}
	var wg sync.WaitGroup
	for g := range semWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range semAcquires {
				ctx, cancel := context.Background(), context.CancelFunc(func() {})
				if i%3 == 2 {
					ctx, cancel = context.WithTimeout(ctx, semHold)
				}
				start := time.Now()
				err := sem.WithSlot(ctx, func(context.Context) error {
					now := time.Now()
					say("acq %d %d %d", g, now.UnixNano(), now.Sub(start).Nanoseconds())
					time.Sleep(semHold)
					say("rel %d %d", g, time.Now().UnixNano())
					return nil
				})
				cancel()
				switch {
				case err == nil:
				case errors.Is(err, context.DeadlineExceeded):
					say("timeout %d", g)
				default:
					say("err %d %v", g, err)
				}
			}
		}()
	}
	wg.Wait()
	say("done")
	os.Exit(0)
}

// The target: 4 processes × 2 goroutines × 15 acquisitions of a
// 3-slot semaphore, a third under short deadlines, one process SIGKILLed
// while it holds a slot: never more than 3 holders, 3 reached, the longest
// wait at most 3 s, nothing left in pg_locks.
func TestSemaphoreProcesses(t *testing.T) {
	for _, d := range []string{"postgres", "pgx"} {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			name := t.Name()
			db := pgtest.DB(t, d)
			type span struct{ from, to int64 }
			var mu sync.Mutex
			var spans []span
			var waits []time.Duration
			var timeouts, errs int
			var wg sync.WaitGroup
			for p := range 4 {
				cmd, lines := startHolder(t, d+" "+pgtest.DSN(t)+" semaphore:"+name)
				wg.Add(1)
				go func() {
					defer wg.Done()
					open := map[string]int64{}
					killed := false
					for line := range lines {
						f := strings.Fields(line)
						mu.Lock()
						switch f[0] {
						case "acq":
							at, _ := strconv.ParseInt(f[2], 10, 64)
							w, _ := strconv.ParseInt(f[3], 10, 64)
							open[f[1]] = at
							waits = append(waits, time.Duration(w))
							if p == 0 && !killed {
								// The victim dies holding its slot.
								_ = cmd.Process.Kill()
								killed = true
								spans = append(spans, span{at, time.Now().UnixNano()})
								delete(open, f[1])
							}
						case "rel":
							to, _ := strconv.ParseInt(f[2], 10, 64)
							if from, ok := open[f[1]]; ok {
								spans = append(spans, span{from, to})
								delete(open, f[1])
							}
						case "timeout":
							timeouts++
						case "err":
							errs++
							t.Errorf("process %d: %s", p, line)
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			// The most holders at once, from the spans' ends.
			type edge struct {
				at int64
				d  int
			}
			var edges []edge
			for _, s := range spans {
				edges = append(edges, edge{s.from, 1}, edge{s.to, -1})
			}
			sort.Slice(edges, func(i, j int) bool {
				if edges[i].at != edges[j].at {
					return edges[i].at < edges[j].at
				}
				return edges[i].d < edges[j].d // a release before a grant at the same instant
			})
			most, now := 0, 0
			for _, e := range edges {
				now += e.d
				most = max(most, now)
			}
			longest := slices.Max(waits)
			sorted := slices.Clone(waits)
			slices.Sort(sorted)
			t.Logf("%d grants, %d deadlines, %d errors; at most %d holders; waits: median %v, longest %v",
				len(spans), timeouts, errs, most, sorted[len(sorted)/2].Round(time.Millisecond), longest.Round(time.Millisecond))
			assert.LessOrEqual(t, most, semSlots, "more holders than slots")
			assert.Equal(t, semSlots, most, "the slots were never all held")
			assert.LessOrEqual(t, longest, 3*time.Second, "a wait longer than 3s")
			requireNoSlots(t, db, name, semSlots)
		})
	}
}
