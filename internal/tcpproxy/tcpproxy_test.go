package tcpproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/advisorylock/go-advisory-lock/internal/tcpproxy"
)

// echoServer accepts connections and writes back every line it reads; it
// closes a connection when it reads "bye". It stops when the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil || line == "bye\n" {
						return
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func listen(t *testing.T, target string) *tcpproxy.Proxy {
	t.Helper()
	p, err := tcpproxy.Listen(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func dial(t *testing.T, p *tcpproxy.Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip writes line and reads it back within a second.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	if _, err := io.WriteString(c, line); err != nil {
		t.Fatalf("write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := r.ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("read: got %q, %v; want %q", got, err, line)
	}
}

// silent checks that nothing, not even a close, arrives on c for a while.
func silent(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	got, err := r.ReadString('\n')
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a blackholed connection: got %q, %v; want a timeout", got, err)
	}
}

func TestProxyForwards(t *testing.T) {
	t.Parallel()
	p := listen(t, echoServer(t))
	if p.Target() == "" || p.Addr() == p.Target() {
		t.Fatalf("Addr %q, Target %q", p.Addr(), p.Target())
	}
	for range 2 {
		c, r := dial(t, p)
		roundTrip(t, c, r, "hello\n")
		roundTrip(t, c, r, "again\n")
	}
}

func TestProxyBlackholeHoldsAndResumeDelivers(t *testing.T) {
	t.Parallel()
	p := listen(t, echoServer(t))
	c, r := dial(t, p)
	roundTrip(t, c, r, "before\n")

	p.Blackhole()
	p.Blackhole() // idempotent
	if _, err := io.WriteString(c, "during\n"); err != nil {
		t.Fatalf("a write into a silent network succeeds: got %v", err)
	}
	silent(t, c, r)
	// New connections are accepted but get nowhere either.
	c2, r2 := dial(t, p)
	if _, err := io.WriteString(c2, "new\n"); err != nil {
		t.Fatal(err)
	}
	silent(t, c2, r2)

	p.Resume()
	p.Resume() // idempotent
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "during\n" {
		t.Fatalf("after Resume: got %q, %v; want the held line", got, err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r2.ReadString('\n'); err != nil || got != "new\n" {
		t.Fatalf("after Resume, new connection: got %q, %v; want the held line", got, err)
	}
	roundTrip(t, c, r, "after\n")
}

func TestProxyBlackholeHoldsTheClose(t *testing.T) {
	t.Parallel()
	p := listen(t, echoServer(t))
	c, r := dial(t, p)
	roundTrip(t, c, r, "hi\n")
	p.Blackhole()
	io.WriteString(c, "bye\n") // the server will close, once it gets this
	silent(t, c, r)
	p.Resume()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != io.EOF {
		t.Fatalf("after Resume: got %q, %v; want EOF (the server's close)", got, err)
	}
}

func TestProxyCloseUnblocksReaders(t *testing.T) {
	t.Parallel()
	p := listen(t, echoServer(t))
	c, r := dial(t, p)
	roundTrip(t, c, r, "hi\n")
	p.Blackhole()
	got := make(chan error, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := r.ReadString('\n')
		got <- err
	}()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != io.EOF {
		t.Fatalf("read after Close: got %v, want EOF", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: got %v, want nil", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("dial after Close succeeded")
	}
}

func TestProxyUnreachableTarget(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := listen(t, target)
	c, r := dial(t, p)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("read through a proxy to a closed port: got %v, want EOF", err)
	}
}
