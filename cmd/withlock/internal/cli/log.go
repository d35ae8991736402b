package cli

import (
	"fmt"
	"io"
	"sync"
)

// A logger writes withlock's own messages to stderr, each on one line
// prefixed "withlock: ", with passwords masked. The command's output never
// goes through it. It is safe for concurrent use.
type logger struct {
	mu      sync.Mutex
	w       io.Writer
	r       *redactor
	verbose bool
}

// printf writes a message.
func (l *logger) printf(format string, args ...any) {
	msg := l.r.redact(fmt.Sprintf(format, args...))
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "withlock: %s\n", msg)
}

// verbosef writes a message if -v was given.
func (l *logger) verbosef(format string, args ...any) {
	if l.verbose {
		l.printf(format, args...)
	}
}
