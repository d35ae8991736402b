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
	for _, args := range [][]string{{"-count", "0"}, {"-nosuchflag"}} {
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
