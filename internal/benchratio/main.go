// Command benchratio reads `go test -bench` output of the sqllock
// benchmarks and prints, per driver, the library's figures against the
// hand-written reference and against the one-round-trip floor (SELECT 1),
// with the targets they must meet.
//
// Times are medians over the runs. Ratios are paired: the i-th sample of
// the library is divided by the i-th sample of the reference (or of the
// floor), which internal/benchrun measures in the same process a second
// apart, and the ratio shown is the median of those. On a machine whose
// speed drifts between runs, that cancels the drift that a ratio of two
// medians keeps; the ratio of the medians is shown beside it. When the
// sample counts differ, the ratio of the medians is used.
//
//	go run ./internal/benchrun -count 6 -o bench.txt
//	go run ./internal/benchratio bench.txt
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	in := io.Reader(os.Stdin)
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchratio:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	res, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
	failed := report(os.Stdout, res)
	if failed > 0 {
		fmt.Printf("\n%d target(s) missed\n", failed)
		os.Exit(1)
	}
	fmt.Println("\nall targets met")
}

// results maps "Scenario/driver=X/impl=Y" (without the -N suffix) to each
// metric's samples, e.g. "ns/op" -> [...].
type results map[string]map[string][]float64

// lineRE matches a benchmark line; the name drops the GOMAXPROCS suffix and
// the round suffix (#01) of a sub-benchmark measured again.
var lineRE = regexp.MustCompile(`^Benchmark(\S+?)(?:#\d+)?(?:-\d+)?\s+\d+\s+(.*)$`)

func parse(r io.Reader) (results, error) {
	res := results{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: %v", sc.Text(), err)
			}
			if res[m[1]] == nil {
				res[m[1]] = map[string][]float64{}
			}
			res[m[1]][fields[i+1]] = append(res[m[1]][fields[i+1]], v)
		}
	}
	return res, sc.Err()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (r results) get(name, metric string) (float64, bool) {
	xs := r[name][metric]
	return median(xs), len(xs) > 0
}

// ratio returns the median of the paired ratios of metric, a's i-th sample
// over b's i-th, or the ratio of the medians when the counts differ.
func (r results) ratio(a, b, metric string) float64 {
	as, bs := r[a][metric], r[b][metric]
	if len(as) != len(bs) || len(as) == 0 {
		return median(as) / median(bs)
	}
	rs := make([]float64, len(as))
	for i := range as {
		rs[i] = as[i] / bs[i]
	}
	return median(rs)
}

// report prints the tables and returns the number of missed targets.
func report(w io.Writer, r results) (failed int) {
	check := func(ok bool) string {
		if ok {
			return "ok"
		}
		failed++
		return "MISSED"
	}
	for _, d := range []string{"pq", "pgx"} {
		// A slot released while 8 processes wait: how soon one takes it.
		if p50, ok := r.get("SemaphoreHandoff/driver="+d, "p50-µs"); ok {
			p99, _ := r.get("SemaphoreHandoff/driver="+d, "p99-µs")
			fmt.Fprintf(w, "\ndriver=%s  semaphore hand-off to one of 8 waiting processes: p50 %.1f ms (p99 %.1f ms); p50 ≤ 50 ms %s\n", d, p50/1e3, p99/1e3, check(p50 <= 50e3))
		}
		floor, ok := r.get("Floor/driver="+d, "ns/op")
		if !ok {
			continue
		}
		fmt.Fprintf(w, "\ndriver=%s  floor (SELECT 1, one round trip): %.1f µs\n", d, floor/1e3)
		fmt.Fprintf(w, "%-18s %10s %10s %8s %8s %9s %9s %9s  %s\n", "scenario", "lib µs", "ref µs", "lib/ref", "(medians)", "lib/floor", "lib alloc", "ref alloc", "targets")
		for _, s := range []struct {
			name     string
			maxRatio float64 // lib/ref, 0: no target
			maxFloor float64 // lib/floor, 0: no target
			lib, ref string  // the two sides' labels, if not impl=lib and impl=ref
			label    string  // the row's label, if not name
		}{
			{name: "LockUnlock", maxRatio: 1.05, maxFloor: 3},
			{name: "TryLockContended", maxRatio: 1.05, maxFloor: 1.5},
			{name: "WithLock", maxRatio: 1.05},
			{name: "Parallel", maxRatio: 1.05},
			{name: "Shared"},
			{name: "Handoff"},
			// The keep-alive's cost on the lock path: none expected.
			{name: "KeepAlive", lib: "keepalive=on", ref: "keepalive=off"},
			// Lock+Unlock on a shared session against one of its own
			// (WithSessions): within 1.05.
			{name: "Sessions", maxRatio: 1.05, lib: "mode=sessions", ref: "mode=connections"},
			// A fenced Lock+Unlock against hand-written SQL that gets a
			// token as durable: within 1.05.
			{name: "FencedLockUnlock", maxRatio: 1.05},
			// What fencing costs per lock: on over off, no target.
			{name: "Fencing", lib: "fencing=on", ref: "fencing=off"},
			// What the lease costs per lock, alone and under load: on over
			// off, no target.
			{name: "Lease", lib: "lease=on", ref: "lease=off"},
			{name: "LeaseParallel", lib: "lease=on", ref: "lease=off"},
			// Lock+Unlock behind PgBouncer in transaction mode, held in a
			// transaction, against BEGIN, pg_advisory_xact_lock, COMMIT.
			{name: "Pooler", maxRatio: 1.05},
			// The same behind the pooler for a Locker WithSessions(1): a
			// session carrying nothing else opens and ends its transaction
			// with the lock; one carrying another lock does neither. No
			// target.
			{name: "PoolerSessions", label: "PoolerSess/none", lib: "carrying=none/impl=lib", ref: "carrying=none/impl=ref"},
			{name: "PoolerSessions", label: "PoolerSess/another", lib: "carrying=another/impl=lib", ref: "carrying=another/impl=ref"},
			// An uncontended Acquire+Release of a semaphore against a
			// Mutex's Lock+Unlock: within 1.1.
			{name: "Semaphore", maxRatio: 1.1, lib: "impl=semaphore", ref: "impl=mutex"},
		} {
			if s.lib == "" {
				s.lib, s.ref = "impl=lib", "impl=ref"
			}
			libName, refName := s.name+"/driver="+d+"/"+s.lib, s.name+"/driver="+d+"/"+s.ref
			lib, ok1 := r.get(libName, "ns/op")
			ref, ok2 := r.get(refName, "ns/op")
			if !ok1 || !ok2 {
				continue
			}
			libRef := r.ratio(libName, refName, "ns/op")
			libFloor := r.ratio(libName, "Floor/driver="+d, "ns/op")
			la, _ := r.get(libName, "allocs/op")
			ra, _ := r.get(refName, "allocs/op")
			var targets []string
			if s.maxRatio > 0 {
				targets = append(targets, fmt.Sprintf("lib/ref ≤ %.2f %s", s.maxRatio, check(libRef <= s.maxRatio)))
			}
			if s.maxFloor > 0 {
				targets = append(targets, fmt.Sprintf("lib/floor ≤ %.1f %s", s.maxFloor, check(libFloor <= s.maxFloor)))
			}
			if s.name == "Fencing" {
				targets = append(targets, fmt.Sprintf("fencing costs %+.1f µs per lock", (lib-ref)/1e3))
			}
			if s.name == "Lease" || s.name == "LeaseParallel" {
				targets = append(targets, fmt.Sprintf("the lease costs %+.1f µs per lock", (lib-ref)/1e3))
			}
			if s.name == "KeepAlive" {
				targets = append(targets, "keep-alive on / off (none expected)")
			}
			if s.name == "Handoff" {
				lp, _ := r.get(s.name+"/driver="+d+"/impl=lib", "p50-µs")
				rp, _ := r.get(s.name+"/driver="+d+"/impl=ref", "p50-µs")
				l99, _ := r.get(s.name+"/driver="+d+"/impl=lib", "p99-µs")
				bound := 1.5*floor/1e3 + rp
				targets = append(targets, fmt.Sprintf("hand-off p50 %.0fµs (p99 %.0fµs) ≤ 1.5×floor + ref p50 %.0fµs = %.0fµs %s", lp, l99, rp, bound, check(lp <= bound)))
			}
			if s.label == "" {
				s.label = s.name
			}
			fmt.Fprintf(w, "%-18s %10.1f %10.1f %8.2f %9.2f %9.2f %9.0f %9.0f  %s\n", s.label, lib/1e3, ref/1e3, libRef, lib/ref, libFloor, la, ra, strings.Join(targets, "; "))
		}
	}
	return failed
}
