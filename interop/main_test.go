// Package interop_test proves that withlock --keyspace X contends with the
// real libraries whose keys package keyspace reproduces, both ways: while
// the library holds its lock, `withlock -n` exits 75; while withlock holds,
// the library is refused or waits. docs/keyspace.md marks the schemes
// proven here.
package interop_test

import (
	"testing"

	"github.com/advisorylock/go-advisory-lock/interop/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
