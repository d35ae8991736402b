package cli

import (
	"context"
	"net"
	"sync"

	"github.com/jackc/pgx/v5"
)

// sockets records the connections a pool has open, so that the command can
// inherit the socket of the lock's session (see files): the server then
// keeps the lock until every process holding that socket has exited, even
// if withlock is killed. It is safe for concurrent use.
type sockets struct {
	mu   sync.Mutex
	open map[*trackedConn]struct{}
}

// track makes s record every connection that cfg dials from now on.
func (s *sockets) track(cfg *pgx.ConnConfig) {
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, s: s}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.open == nil {
			s.open = make(map[*trackedConn]struct{})
		}
		s.open[tc] = struct{}{}
		return tc, nil
	}
}

// conns returns the connections open now.
func (s *sockets) conns() []net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]net.Conn, 0, len(s.open))
	for c := range s.open {
		out = append(out, c.Conn)
	}
	return out
}

// A trackedConn is a dialed connection that its sockets forgets on Close.
type trackedConn struct {
	net.Conn
	s *sockets
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.open, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}
