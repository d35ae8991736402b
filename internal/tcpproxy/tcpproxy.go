// Package tcpproxy provides a loopback TCP proxy for tests that need to
// break a network path in controlled ways, such as a network that goes
// silent without closing anything.
//
// A Proxy listens on 127.0.0.1 and forwards each accepted connection to a
// target address, byte for byte, in both directions:
//
//	p, err := tcpproxy.Listen("127.0.0.1:5432")
//	if err != nil { ... }
//	defer p.Close()
//	dsn := "postgres://postgres@" + p.Addr() + "/postgres?sslmode=disable"
//	...
//	p.Blackhole() // from now on nothing gets through, and nothing is closed
//
// It uses only the standard library.
package tcpproxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// dialTimeout bounds connecting to the target.
const dialTimeout = 10 * time.Second

// A Proxy forwards TCP connections from a loopback address to a target.
// Its methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // both ends of every open forwarded connection
	gate   chan struct{}         // closed while forwarding; open (blocking) while blackholed
	closed bool

	done chan struct{}  // closed by Close
	wg   sync.WaitGroup // the accept loop and every forwarding goroutine
}

// Listen starts a proxy on 127.0.0.1 at a free port, forwarding every
// connection it accepts to target (host:port). Call [Proxy.Close] when done.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gate := make(chan struct{})
	close(gate)
	p := &Proxy{
		ln:     ln,
		target: target,
		conns:  make(map[net.Conn]struct{}),
		gate:   gate,
		done:   make(chan struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's address, "127.0.0.1:port", for clients to dial
// instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Blackhole stops forwarding in both directions, on every connection, open
// or accepted later, without closing anything: the network path goes silent.
// Writes on either side still succeed (the bytes are held, as a network
// holds unacknowledged packets), reads wait, and a close by either side is
// not passed on either. New connections are still accepted, as the kernel
// completes handshakes on a listening socket, but get no further.
//
// Nothing is lost: [Proxy.Resume] delivers what was held, as TCP
// retransmission does when a network comes back. [Proxy.Close] closes every
// connection, so that a client stuck in a read on the silent path returns.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already blackholed
	}
}

// Resume ends a [Proxy.Blackhole]: forwarding goes on, starting with what
// was held.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Close stops the proxy: it stops accepting, closes both ends of every
// forwarded connection, and waits for its goroutines to return. Clients
// blocked in a read on a proxied connection see it closed. Close is
// idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// serve connects client to the target and forwards both ways until either
// side closes, then closes both.
func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	ended := make(chan struct{}, 2)
	go func() { p.pipe(server, client); ended <- struct{}{} }()
	go func() { p.pipe(client, server); ended <- struct{}{} }()
	<-ended // one side closed (and the close got through): close the other
	_ = client.Close()
	_ = server.Close()
	<-ended
}

// pipe copies from src to dst, holding every chunk (and the end of src) at
// the gate while the proxy is blackholed.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if !p.pass() {
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if rerr != nil {
			return
		}
	}
}

// pass waits until the proxy forwards, and reports false if it closed
// first.
func (p *Proxy) pass() bool {
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
		return true
	case <-p.done:
		return false
	}
}

// track records c so that Close closes it; it closes c and reports false if
// the proxy is already closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}
