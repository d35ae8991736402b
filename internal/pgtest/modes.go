package pgtest

import (
	"fmt"
	"strconv"
)

// StopMode shuts the server down with pg_ctl stop -m mode ("smart", "fast"
// or "immediate", the last one a crash: no checkpoint, recovery at the next
// start) and waits until it has exited. Unlike [Cluster.Stop] it reports
// failure as an error, for programs outside tests.
func (c *Cluster) StopMode(mode string) error {
	if out, err := c.pgctl("stop", "-m", mode, "-w", "-t", strconv.Itoa(pgctlWaitSecs)); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %v\n%s", mode, err, out)
	}
	return nil
}

// RestartMode restarts the server with pg_ctl restart -m mode (see
// [Cluster.StopMode]) and waits until it answers queries again. Unlike
// [Cluster.Restart] it reports failure as an error, for programs outside
// tests.
func (c *Cluster) RestartMode(mode string) error {
	off := c.logSize()
	out, err := c.pgctl("restart", "-m", mode, "-w", "-t", strconv.Itoa(pgctlWaitSecs), "-l", c.logFile)
	if err == nil {
		err = waitReady(c.DSN())
	}
	if err != nil {
		return fmt.Errorf("pg_ctl restart -m %s: %v\n%s\nserver log:\n%s", mode, err, out, c.logSince(off))
	}
	return nil
}
