package main

import (
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-count", "0"}, {"-rounds", "0"}, {"-nosuchflag"}} {
		var stderr strings.Builder
		if code := run(args, io.Discard, &stderr); code != 64 {
			t.Errorf("run(%q) = %d, want 64 (usage)", args, code)
		}
		if stderr.Len() == 0 {
			t.Errorf("run(%q) said nothing on stderr", args)
		}
	}
}

// children finds a process this test started: it is how benchrun reaches
// the backends a pinned postmaster has already forked.
func TestChildren(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	if kids := children(os.Getpid()); !slices.Contains(kids, cmd.Process.Pid) {
		t.Errorf("children(%d) = %v, want it to hold %d", os.Getpid(), kids, cmd.Process.Pid)
	}
}

// A scenario measured in rounds appears as name#01, name#02 in go test's
// output; copyRounds makes each round one more sample of name.
func TestCopyRounds(t *testing.T) {
	in := "goos: linux\n" +
		"BenchmarkLockUnlock/driver=pgx/impl=lib         \t    2000\t    142000 ns/op\n" +
		"BenchmarkLockUnlock/driver=pgx/impl=lib#01      \t    2000\t    143000 ns/op\n" +
		"BenchmarkFloor/driver=pq#12-2 \t 10 \t 7 ns/op\n" +
		"BenchmarkBare#03\n" +
		"PASS # not a benchmark #01\n"
	want := "goos: linux\n" +
		"BenchmarkLockUnlock/driver=pgx/impl=lib         \t    2000\t    142000 ns/op\n" +
		"BenchmarkLockUnlock/driver=pgx/impl=lib      \t    2000\t    143000 ns/op\n" +
		"BenchmarkFloor/driver=pq-2 \t 10 \t 7 ns/op\n" +
		"BenchmarkBare\n" +
		"PASS # not a benchmark #01\n"
	var out strings.Builder
	if err := copyRounds(&out, strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if out.String() != want {
		t.Errorf("copyRounds:\n%s\nwant:\n%s", out.String(), want)
	}
}
