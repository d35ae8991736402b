package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkFloor/driver=pq-2    	    2000	     100 ns/op	     496 B/op	      13 allocs/op
BenchmarkFloor/driver=pq-2    	    2000	     300 ns/op	     496 B/op	      13 allocs/op
BenchmarkLockUnlock/driver=pq/impl=lib-2         	    2000	    250 ns/op	 1936 B/op	      41 allocs/op
BenchmarkLockUnlock/driver=pq/impl=ref-2         	    2000	    300 ns/op	 1488 B/op	      44 allocs/op
BenchmarkHandoff/driver=pq/impl=lib-2            	    2000	    574150 ns/op	       189.0 p50-µs	       360.0 p99-µs
BenchmarkHandoff/driver=pq/impl=ref-2            	    2000	    599243 ns/op	       211.0 p50-µs	       422.0 p99-µs
`

func TestParseAndReport(t *testing.T) {
	r, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := r.get("Floor/driver=pq", "ns/op"); got != 200 {
		t.Errorf("median floor = %v, want 200", got)
	}
	if got, _ := r.get("Handoff/driver=pq/impl=lib", "p50-µs"); got != 189 {
		t.Errorf("p50 = %v, want 189", got)
	}
	var out strings.Builder
	failed := report(&out, r)
	// LockUnlock: 250/300 ≤ 1.05 ok; 250/200 ≤ 3 ok. Hand-off: 189 ≤ 0.3 + 211 ok.
	if failed != 0 {
		t.Errorf("failed = %d, want 0\n%s", failed, out.String())
	}
	if !strings.Contains(out.String(), "LockUnlock") {
		t.Errorf("report lacks LockUnlock:\n%s", out.String())
	}
}
