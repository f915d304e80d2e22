// Package testpg starts a private PostgreSQL server on a free loopback port
// for tests, so they never touch a shared instance and can stop, crash,
// restart or wipe it.
//
// The server runs from Debian's postgresql package (initdb and postgres in
// /usr/lib/postgresql/<version>/bin, or the directory in TESTPG_BIN). When
// the tests run as root, as CI does, the server runs as the unprivileged
// `postgres` user, since PostgreSQL refuses to run as root.
//
// initdb takes about a second, so it runs once per machine: the initialised
// cluster is kept as a template in $TMPDIR/dynocycle-testpg/ and each server
// starts from a copy of it (a tenth of a second). The template holds two
// roles: the superuser "postgres" (AdminURL) and "app", a plain role that
// owns the database "app" (URL), as on Heroku Postgres, where the app's role
// owns its database but is no superuser.
package testpg

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Passwords of the template's roles. Tests only: the server listens on
// loopback alone.
const (
	AdminPassword = "admin-secret"
	AppPassword   = "app-secret"
)

// Options adjust one server.
type Options struct {
	// TLS turns on ssl with a self-signed certificate that no client can
	// verify, as with Heroku Postgres.
	TLS bool
	// MaxConnections is max_connections; default 100.
	MaxConnections int
	// Settings are more `-c name=value` settings.
	Settings map[string]string
}

// Server is a PostgreSQL server owned by one test.
type Server struct {
	Port int
	Dir  string // data directory
	opts Options
	t    testing.TB
	bin  string
	cred *syscall.Credential // nil unless running as root
	cmd  *exec.Cmd
	exit chan error
}

// Start runs a server on a free port and stops it when the test ends.
// Missing server binaries fail the test: scripts/test installs them.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	s, err := Launch(o)
	if err != nil {
		t.Fatal(err)
	}
	s.t = t
	t.Cleanup(s.Close)
	return s
}

// Launch runs a server on a free port for a program that is not a test (a
// benchmark harness); Close stops it and removes its data.
func Launch(o Options) (*Server, error) {
	if o.MaxConnections == 0 {
		o.MaxConnections = 100
	}
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	tmpl, err := template(bin, cred)
	if err != nil {
		return nil, fmt.Errorf("testpg template: %w", err)
	}
	root, err := os.MkdirTemp("", "testpg-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: filepath.Join(root, "data"), opts: o, bin: bin, cred: cred}
	fail := func(err error) (*Server, error) {
		_ = os.RemoveAll(root)
		return nil, err
	}
	if err := copyTree(tmpl, s.Dir, cred); err != nil {
		return fail(fmt.Errorf("testpg: copy template: %w", err))
	}
	if cred != nil {
		// The data directory's parent must be reachable by the server's user.
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			return fail(err)
		}
	}
	if o.TLS {
		if err := writeCert(s.Dir, cred); err != nil {
			return fail(fmt.Errorf("testpg: certificate: %w", err))
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := s.start(); err != nil {
		return fail(fmt.Errorf("testpg: %w", err))
	}
	return s, nil
}

// Close stops the server and removes its data.
func (s *Server) Close() {
	s.Stop()
	_ = os.RemoveAll(filepath.Dir(s.Dir))
}

// Up starts a stopped server again on the same port with the data it has;
// Restart is the same for tests.
func (s *Server) Up() error {
	s.Stop()
	return s.start()
}

// URL is the app role's URL of the app database, like Heroku's DATABASE_URL
// (plus sslmode=disable, or sslmode=require with TLS on).
func (s *Server) URL() string { return s.url("app", AppPassword, "app") }

// AdminURL is the superuser's URL of the app database.
func (s *Server) AdminURL() string { return s.url("postgres", AdminPassword, "app") }

func (s *Server) url(role, password, db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: s.Addr(), Path: "/" + db}
	mode := "disable"
	if s.opts.TLS {
		mode = "require"
	}
	u.RawQuery = "sslmode=" + mode
	return u.String()
}

// PID is the postmaster's process id, 0 while the server is stopped; its
// children are the sessions' backends.
func (s *Server) PID() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Stop shuts the server down (fast shutdown: sessions are ended, data
// kept) and waits for it to exit. The port stays reserved for Restart.
func (s *Server) Stop() { s.signal(syscall.SIGINT) }

// Crash stops the server as a crash would (immediate shutdown: no
// checkpoint, recovery at the next start). Committed data survives.
func (s *Server) Crash() { s.signal(syscall.SIGQUIT) }

// Wipe stops the server and replaces its data with the empty template: a
// failover to a replica that has nothing, or a restored old backup.
func (s *Server) Wipe() {
	s.t.Helper()
	s.Stop()
	tmpl, err := template(s.bin, s.cred)
	if err != nil {
		s.t.Fatal(err)
	}
	keep := map[string][]byte{}
	for _, f := range []string{"server.crt", "server.key"} {
		if b, err := os.ReadFile(filepath.Join(s.Dir, f)); err == nil {
			keep[f] = b
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		s.t.Fatal(err)
	}
	if err := copyTree(tmpl, s.Dir, s.cred); err != nil {
		s.t.Fatal(err)
	}
	for f, b := range keep {
		if err := writeOwned(filepath.Join(s.Dir, f), b, 0o600, s.cred); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *Server) signal(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exit:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exit
	}
	s.cmd = nil
}

// Restart starts the server (again) on the same port with the data it
// has, failing the test if it cannot.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Up(); err != nil {
		s.t.Fatalf("testpg: %v", err)
	}
}

func (s *Server) start() error {
	args := []string{"-D", s.Dir, "-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=",
		"-c", "max_connections=" + strconv.Itoa(s.opts.MaxConnections),
		"-c", "shared_buffers=16MB",
		// No fsync: a crash of the server (not of the machine) still keeps every
		// commit, since the WAL is written before a commit returns.
		"-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "log_min_messages=warning",
	}
	if s.opts.TLS {
		args = append(args, "-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key")
	}
	keys := make([]string, 0, len(s.opts.Settings))
	for k := range s.opts.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+s.opts.Settings[k])
	}
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(s.Dir), "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.cmd = cmd
	s.exit = make(chan error, 1)
	go func() { s.exit <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		// The postgres database exists from initdb on, before the template has app.
		c, err := pgx.Connect(ctx, s.url("postgres", AdminPassword, "postgres"))
		if err == nil {
			_ = c.Close(ctx)
			return nil
		}
		select {
		case werr := <-s.exit:
			s.cmd = nil
			return fmt.Errorf("postgres on port %d exited before it was ready (%v): %s", s.Port, werr, s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d not ready after 30s: %v: %s", s.Port, err, s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(s.Dir), "server.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Exec runs sql as the superuser on the app database.
func (s *Server) Exec(ctx context.Context, sql string, args ...any) error {
	c, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql, args...)
	return err
}

// Terminate ends every session whose application_name is name, as
// pg_terminate_backend does to a connection an operator kills, and returns
// how many it ended.
func (s *Server) Terminate(ctx context.Context, name string) (int, error) {
	c, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	var n int
	err = c.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
		FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()`, name).Scan(&n)
	return n, err
}

// Connections counts the sessions whose application_name is name.
func (s *Server) Connections(ctx context.Context, name string) (int, error) {
	c, err := pgx.Connect(ctx, s.AdminURL())
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	var n int
	err = c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, name).Scan(&n)
	return n, err
}

// WaitDown blocks until nothing listens on the port any more.
func (s *Server) WaitDown(ctx context.Context) error {
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond)
		if err != nil {
			return nil
		}
		c.Close()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// BinDir is where initdb and postgres are: TESTPG_BIN, or the newest
// /usr/lib/postgresql/<version>/bin.
func BinDir() (string, error) { return binDir() }

func binDir() (string, error) {
	if d := os.Getenv("TESTPG_BIN"); d != "" {
		return d, checkBin(d)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return va - vb
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if checkBin(dirs[i]) == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("postgres server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin nor TESTPG_BIN: " +
		"run the tests with scripts/test, which installs Debian's postgresql package")
}

func checkBin(dir string) error {
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("testpg: %s missing in %s", b, dir)
		}
	}
	return nil
}

// credential is the postgres user's when running as root: PostgreSQL will
// not run as root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("testpg: running as root needs the unprivileged user postgres (Debian's postgresql package makes it): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// template returns the directory of an initialised cluster with the app
// role and database, making it on first use. Concurrent test binaries race
// to make it; the rename decides, and the loser's copy is discarded.
func template(bin string, cred *syscall.Credential) (string, error) {
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("postgres --version: %w", err)
	}
	version := "unknown"
	if f := strings.Fields(string(out)); len(f) >= 3 {
		version = f[2] // "postgres (PostgreSQL) 15.20 (Debian ...)"
	}
	owner := "self"
	if cred != nil {
		owner = strconv.Itoa(int(cred.Uid))
	}
	base := filepath.Join(os.TempDir(), "dynocycle-testpg")
	final := filepath.Join(base, "pg"+url.PathEscape(version)+"-uid"+owner+"-v1")
	if _, err := os.Stat(filepath.Join(final, "PG_VERSION")); err == nil {
		return final, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(base, "init-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	if cred != nil {
		if err := os.Chown(work, int(cred.Uid), int(cred.Gid)); err != nil {
			return "", err
		}
	}
	data := filepath.Join(work, "data")
	pwfile := filepath.Join(work, "pw")
	if err := writeOwned(pwfile, []byte(AdminPassword+"\n"), 0o600, cred); err != nil {
		return "", err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb: %v: %s", err, out)
	}
	// Start it once to make the app role and database.
	s := &Server{Dir: data, bin: bin, cred: cred, opts: Options{MaxConnections: 10}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := s.start(); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = func() error {
		c, err := pgx.Connect(ctx, s.url("postgres", AdminPassword, "postgres"))
		if err != nil {
			return err
		}
		defer c.Close(ctx)
		for _, q := range []string{
			"CREATE ROLE app LOGIN PASSWORD '" + AppPassword + "'",
			"CREATE DATABASE app OWNER app",
		} {
			if _, err := c.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}()
	s.Stop()
	if err != nil {
		return "", err
	}
	_ = os.Remove(filepath.Join(data, "postmaster.pid"))
	_ = os.Remove(filepath.Join(work, "server.log"))
	if err := os.Rename(data, final); err != nil {
		if _, serr := os.Stat(filepath.Join(final, "PG_VERSION")); serr == nil {
			return final, nil // another process made it first
		}
		return "", err
	}
	return final, nil
}

// copyTree copies the template to dst with owner and modes kept.
func copyTree(src, dst string, cred *syscall.Credential) error {
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a: %v: %s", err, out)
	}
	if cred != nil {
		if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", cred.Uid, cred.Gid), dst).CombinedOutput(); err != nil {
			return fmt.Errorf("chown: %v: %s", err, out)
		}
	}
	return os.Chmod(dst, 0o700)
}

func writeOwned(path string, b []byte, mode os.FileMode, cred *syscall.Credential) error {
	if err := os.WriteFile(path, b, mode); err != nil {
		return err
	}
	if cred != nil {
		return os.Chown(path, int(cred.Uid), int(cred.Gid))
	}
	return nil
}

// writeCert writes a self-signed certificate for 127.0.0.1 into dir.
func writeCert(dir string, cred *syscall.Credential) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "testpg"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeOwned(filepath.Join(dir, "server.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644, cred); err != nil {
		return err
	}
	return writeOwned(filepath.Join(dir, "server.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600, cred)
}
