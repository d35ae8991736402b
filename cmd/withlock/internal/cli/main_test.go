package cli

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/advisorylock/go-advisory-lock/internal/pgtest"
)

// No goroutine outlives the tests: signal forwarders, child waiters and
// sqllock's keep-alives all end.
func TestMain(m *testing.M) {
	if status, ok := Guard(); ok { // the commands of in-process runs start under this binary
		os.Exit(status)
	}
	pgtest.Main(m, func() error { return goleak.Find() })
}
