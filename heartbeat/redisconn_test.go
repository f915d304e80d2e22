package heartbeat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynocycle/dynocycle/internal/testredis"
	"github.com/dynocycle/dynocycle/internal/testutil"
)

func TestConnectOptions(t *testing.T) {
	srv := testredis.Start(t)
	ctx := context.Background()
	c, err := Connect(ctx, ConnectOptions{URL: "redis://" + srv.Addr() + "/3", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.Options()
	if o.DB != 3 || o.TLSConfig != nil {
		t.Fatalf("db %d tls %v", o.DB, o.TLSConfig)
	}
	if o.DialTimeout != 2*time.Second || o.ReadTimeout != 2*time.Second || o.WriteTimeout != 2*time.Second ||
		o.PoolSize != 1 || o.PipelinePoolSize != -1 || o.MinIdleConns != 0 || o.MaxRetries != 1 {
		t.Fatalf("client options %+v", o)
	}
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Do(ctx, "DBSIZE").Int(); n != 1 {
		t.Fatalf("dbsize in db 3 = %d", n)
	}
	// Options in the URL win over the defaults.
	c2, err := Connect(ctx, ConnectOptions{URL: srv.URL() + "?dial_timeout=5s", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if c2.Options().DialTimeout != 5*time.Second {
		t.Fatalf("dial timeout %s", c2.Options().DialTimeout)
	}
}

// A password in the URL never shows in an error or a log line, whatever
// goes wrong.
func TestConnectNeverShowsPassword(t *testing.T) {
	const secret = "Sup3rS3cretPassw0rd"
	srv := testredis.Start(t)
	ctx := context.Background()
	admin := connect(t, srv)
	if err := admin.Do(ctx, "ACL", "SETUSER", "agent", "on", ">"+secret, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "requirepass", secret).Err(); err != nil {
		t.Fatal(err)
	}
	freePort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()

	var logs testutil.Buffer
	var texts []string
	check := func(name string, err error) {
		if err != nil {
			texts = append(texts, name+": "+err.Error())
		}
	}
	try := func(name, url string, opts ConnectOptions) {
		opts.URL = url
		opts.Logger = newLogger(&logs)
		c, err := Connect(ctx, opts)
		check(name+" connect", err)
		if c == nil {
			return
		}
		defer c.Close()
		check(name+" ping", c.Ping(ctx).Err())
		f := NewRedis(c, RedisOptions{App: "a", Dyno: "worker.1", Settle: -1, Logger: newLogger(&logs)})
		check(name+" publish", f.Publish(ctx, Presence{State: StateWatching}))
		_, err = f.Acquire(ctx)
		check(name+" acquire", err)
	}

	try("good password", "redis://:"+secret+"@"+srv.Addr()+"/0", ConnectOptions{})
	try("acl user", "redis://agent:"+secret+"@"+srv.Addr()+"/1", ConnectOptions{})
	try("wrong password", "redis://:"+secret+"X@"+srv.Addr(), ConnectOptions{})
	try("wrong user", "redis://nobody:"+secret+"@"+srv.Addr(), ConnectOptions{})
	try("unreachable", "redis://:"+secret+"@"+freePort, ConnectOptions{})
	try("tls to plain", "rediss://:"+secret+"@"+srv.Addr(), ConnectOptions{OnHeroku: true})
	try("bad db", "redis://:"+secret+"@"+srv.Addr()+"/"+secret, ConnectOptions{})
	try("bad escape", "redis://:"+secret+"%zz@"+srv.Addr(), ConnectOptions{})
	try("bad option", "redis://:"+secret+"@"+srv.Addr()+"/0?"+secret+"=1", ConnectOptions{})
	try("bad scheme", "http://:"+secret+"@"+srv.Addr(), ConnectOptions{})
	try("bad verify", "redis://:"+secret+"@"+srv.Addr(), ConnectOptions{TLSVerify: "maybe"})

	out := strings.Join(texts, "\n") + "\n" + logs.String()
	if strings.Contains(out, secret) || strings.Contains(out, "Sup3r") {
		t.Fatalf("password leaked:\n%s", out)
	}
	// Make sure the cases above did fail where they should, or the check
	// proves nothing.
	for _, name := range []string{"wrong password ping", "wrong user ping", "unreachable ping",
		"tls to plain ping", "bad db connect", "bad escape connect", "bad option connect",
		"bad scheme connect", "bad verify connect"} {
		if !strings.Contains(out, name+": ") {
			t.Errorf("%q did not fail; errors:\n%s", name, out)
		}
	}
	for _, name := range []string{"good password", "acl user"} {
		if strings.Contains(out, name) {
			t.Errorf("%q failed:\n%s", name, out)
		}
	}
}

func TestConnectTLS(t *testing.T) {
	srv := testredis.Start(t)
	proxy := startTLSProxy(t, srv.Addr())
	url := "rediss://" + proxy + "/0"
	ctx := context.Background()

	for _, tc := range []struct {
		name     string
		opts     ConnectOptions
		url      string
		wantOK   bool
		wantWarn bool
	}{
		{"heroku auto skips verification", ConnectOptions{OnHeroku: true}, url, true, true},
		{"heroku verify true checks the certificate", ConnectOptions{OnHeroku: true, TLSVerify: "true"}, url, false, false},
		{"off heroku auto verifies", ConnectOptions{TLSVerify: "auto"}, url, false, false},
		{"verify false skips verification", ConnectOptions{TLSVerify: "false"}, url, true, true},
		{"skip_verify in url", ConnectOptions{}, url + "?skip_verify=true", true, true},
		{"verify true overrides skip_verify in url", ConnectOptions{TLSVerify: "true"}, url + "?skip_verify=true", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs testutil.Buffer
			tc.opts.URL = tc.url
			tc.opts.Logger = newLogger(&logs)
			c, err := Connect(ctx, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for range 3 { // several commands, several dials: still one warning
				err = c.Ping(ctx).Err()
			}
			if tc.wantOK != (err == nil) {
				t.Fatalf("ping: %v, want ok=%v", err, tc.wantOK)
			}
			if !tc.wantOK && !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("ping: %v, want a certificate error", err)
			}
			warnings := strings.Count(logs.String(), "event=redis_tls_noverify")
			if tc.wantWarn && warnings != 1 || !tc.wantWarn && warnings != 0 {
				t.Fatalf("%d tls warnings, want warn=%v:\n%s", warnings, tc.wantWarn, logs.String())
			}
		})
	}
}

// startTLSProxy terminates TLS with a fresh self-signed certificate, as
// Heroku's Redis does, and forwards to a plain redis-server.
func startTLSProxy(t *testing.T, backend string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "self-signed redis"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", backend)
			if err != nil {
				in.Close()
				continue
			}
			track(in)
			track(out)
			wg.Go(func() { _, _ = io.Copy(out, in); out.Close() })
			wg.Go(func() { _, _ = io.Copy(in, out); in.Close() })
		}
	})
	return l.Addr().String()
}
