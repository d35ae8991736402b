package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
BenchmarkFloor/driver=pq-2    	    2000	     100 ns/op	     496 B/op	      13 allocs/op
BenchmarkFloor/driver=pq#01-2    	    2000	     300 ns/op	     496 B/op	      13 allocs/op
BenchmarkLockUnlock/driver=pq/impl=lib-2         	    2000	    250 ns/op	 1936 B/op	      41 allocs/op
BenchmarkLockUnlock/driver=pq/impl=ref-2         	    2000	    300 ns/op	 1488 B/op	      44 allocs/op
BenchmarkHandoff/driver=pq/impl=lib-2            	    2000	    574150 ns/op	       189.0 p50-µs	       360.0 p99-µs
BenchmarkHandoff/driver=pq/impl=ref-2            	    2000	    599243 ns/op	       211.0 p50-µs	       422.0 p99-µs
BenchmarkKeepAlive/driver=pq/keepalive=on-2      	    2000	    255 ns/op	 1936 B/op	      41 allocs/op
BenchmarkKeepAlive/driver=pq/keepalive=off-2     	    2000	    250 ns/op	 1900 B/op	      40 allocs/op
`

func TestParseAndReport(t *testing.T) {
	r, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := r.get("Floor/driver=pq", "ns/op"); got != 200 {
		t.Errorf("median floor = %v, want 200 (a round's #01 suffix is one more sample)", got)
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
	// The keep-alive row pairs its own two sides: 255/250.
	if !strings.Contains(out.String(), "KeepAlive                 0.3        0.2     1.02") {
		t.Errorf("report lacks the keep-alive's on/off ratio:\n%s", out.String())
	}
}

// Ratios pair the i-th samples, which benchrun takes in one process, so a
// machine that drifts between runs does not skew them; with unequal counts
// they fall back to the ratio of the medians.
func TestPairedRatio(t *testing.T) {
	r := results{
		"a": {"ns/op": {100, 300, 200}},
		"b": {"ns/op": {95, 280, 210}},
		"c": {"ns/op": {100, 200}},
	}
	// Pairs: 1.053, 1.071, 0.952 -> median 1.053; medians 200/210 = 0.952.
	if got := r.ratio("a", "b", "ns/op"); got < 1.052 || got > 1.053 {
		t.Errorf("paired ratio = %v, want 100/95", got)
	}
	if got := r.ratio("a", "c", "ns/op"); got != 200.0/150 {
		t.Errorf("ratio with unequal counts = %v, want the ratio of the medians %v", got, 200.0/150)
	}
}
