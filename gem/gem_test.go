// Package gem tests the dynocycle gems as a Rails team meets them: `make gem`
// builds them, the system `gem` installs one, Bundler installs one into a
// scratch app, and the agent runs through the gem's executable around a real
// Sidekiq. The tools come from Debian (ruby, ruby-bundler, qemu-user,
// redis-server, ruby-sidekiq), installed by scripts/test; a missing one fails
// the test.
package gem

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/dynocycle/dynocycle/internal/testredis"
)

// nativePlatforms are the platforms `make gem` builds a binary for, with the
// ELF machine each binary must be.
var nativePlatforms = map[string]elf.Machine{
	"x86_64-linux":  elf.EM_X86_64,
	"aarch64-linux": elf.EM_AARCH64,
}

var (
	version string // VERSION at the repository's root
	pkgDir  string // where `make gem` put the gems
)

func TestMain(m *testing.M) {
	code, err := buildGems(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gem tests:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildGems(m *testing.M) (int, error) {
	for _, tool := range []string{"make", "gem", "ruby"} {
		if _, err := exec.LookPath(tool); err != nil {
			return 0, fmt.Errorf("%s not found: run the tests with `make test`, which installs it: %w", tool, err)
		}
	}
	v, err := os.ReadFile("../VERSION")
	if err != nil {
		return 0, err
	}
	version = strings.TrimSpace(string(v))
	dir, err := os.MkdirTemp("", "dynocycle-gems")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	pkgDir = filepath.Join(dir, "pkg")
	make := exec.Command("make", "-C", "..", "gem", "PKG="+pkgDir)
	if out, err := make.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("make gem: %w\n%s", err, out)
	}
	return m.Run(), nil
}

// gemFile is the path of the gem for platform ("ruby": the plain gem).
func gemFile(platform string) string {
	if platform == "ruby" {
		return filepath.Join(pkgDir, "dynocycle-"+version+".gem")
	}
	return filepath.Join(pkgDir, "dynocycle-"+version+"-"+platform+".gem")
}

// need fails the test unless every tool is on PATH.
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run the tests with `make test` (scripts/test installs it): %v", tool, err)
		}
	}
}

// scratch is an empty home and GEM_HOME: nothing installed by hand, and no
// Bundler or RubyGems setting of the machine's, leaks into a test.
type scratch struct {
	dir, home, gemHome string
}

func newScratch(t *testing.T) *scratch {
	t.Helper()
	dir := t.TempDir()
	s := &scratch{dir: dir, home: filepath.Join(dir, "home"), gemHome: filepath.Join(dir, "gems")}
	if err := os.MkdirAll(s.home, 0o755); err != nil {
		t.Fatal(err)
	}
	return s
}

// env is a clean environment for Ruby tools plus extra.
func (s *scratch) env(extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + s.home,
		"GEM_HOME=" + s.gemHome,
		"LANG=C.UTF-8",
		"BUNDLE_SILENCE_ROOT_WARNING=1",
	}, extra...)
}

// run runs a command to its end in dir and returns its stdout, stderr and
// exit code; a command that cannot start fails the test.
func (s *scratch) run(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir, cmd.Env = dir, s.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// mustRun is run for a command that has to succeed.
func (s *scratch) mustRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	stdout, stderr, code := s.run(t, dir, args...)
	if code != 0 {
		t.Fatalf("%s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// gemContents reads the files packed in a .gem (a tar holding data.tar.gz):
// their headers, and the bodies of those named in bodies.
func gemContents(t *testing.T, path string, bodies ...string) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	outer := tar.NewReader(f)
	for {
		h, err := outer.Next()
		if err == io.EOF {
			t.Fatalf("%s has no data.tar.gz", path)
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Name != "data.tar.gz" {
			continue
		}
		gz, err := gzip.NewReader(outer)
		if err != nil {
			t.Fatalf("%s data.tar.gz: %v", path, err)
		}
		headers, contents := map[string]*tar.Header{}, map[string][]byte{}
		inner := tar.NewReader(gz)
		for {
			h, err := inner.Next()
			if err == io.EOF {
				return headers, contents
			}
			if err != nil {
				t.Fatalf("%s data.tar.gz: %v", path, err)
			}
			headers[h.Name] = h
			if slices.Contains(bodies, h.Name) {
				if contents[h.Name], err = io.ReadAll(inner); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
}

// `make gem` builds exactly the plain gem and one native gem per platform,
// all with VERSION; each native gem carries one static, executable binary
// for its machine, and the plain gem none.
func TestMakeGemBuildsEveryPlatform(t *testing.T) {
	want := []string{filepath.Base(gemFile("ruby"))}
	for platform := range nativePlatforms {
		want = append(want, filepath.Base(gemFile(platform)))
	}
	entries, err := os.ReadDir(pkgDir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("make gem built %v, want %v", got, want)
	}

	for _, platform := range append([]string{"ruby"}, "x86_64-linux", "aarch64-linux") {
		t.Run(platform, func(t *testing.T) {
			// The spec as RubyGems reads it from the package.
			spec, err := exec.Command("ruby", "-e",
				`require "rubygems/package"; s = Gem::Package.new(ARGV[0]).spec; puts s.name, s.version, s.platform, s.bindir, s.executables.join(",")`,
				gemFile(platform)).CombinedOutput()
			if err != nil {
				t.Fatalf("reading the spec: %v\n%s", err, spec)
			}
			if want := strings.Join([]string{"dynocycle", version, platform, "exe", "dynocycle"}, "\n") + "\n"; string(spec) != want {
				t.Errorf("spec (name, version, platform, bindir, executables) =\n%s\nwant\n%s", spec, want)
			}

			binary := "exe/" + platform + "/dynocycle"
			files, bodies := gemContents(t, gemFile(platform), binary)
			for _, name := range []string{"exe/dynocycle", "lib/dynocycle.rb", "lib/dynocycle/version.rb", "lib/dynocycle/binary.rb", "VERSION", "dynocycle.gemspec"} {
				if files[name] == nil {
					t.Errorf("%s missing from the gem", name)
				}
			}
			if h := files["exe/dynocycle"]; h != nil && h.Mode&0o111 == 0 {
				t.Errorf("exe/dynocycle is not executable: mode %o", h.Mode)
			}
			var carried []string
			for name := range files {
				if strings.Count(name, "/") == 2 && strings.HasPrefix(name, "exe/") {
					carried = append(carried, name)
				}
			}
			if platform == "ruby" {
				if len(carried) != 0 {
					t.Errorf("the plain gem carries binaries: %v", carried)
				}
				return
			}
			if !slices.Equal(carried, []string{binary}) {
				t.Fatalf("carried binaries %v, want exactly %s", carried, binary)
			}
			if h := files[binary]; h.Mode&0o111 == 0 {
				t.Errorf("%s is not executable: mode %o", binary, h.Mode)
			}
			bin, err := elf.NewFile(bytes.NewReader(bodies[binary]))
			if err != nil {
				t.Fatalf("%s is not an ELF file: %v", binary, err)
			}
			if bin.Machine != nativePlatforms[platform] || bin.Class != elf.ELFCLASS64 {
				t.Errorf("%s is %v %v, want %v 64-bit", binary, bin.Machine, bin.Class, nativePlatforms[platform])
			}
			for _, p := range bin.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s is dynamically linked (has an interpreter); gems must carry CGO_ENABLED=0 binaries", binary)
				}
			}
		})
	}
}

// The aarch64 binary, pulled out of its gem, runs under qemu-user and
// prints VERSION.
func TestAarch64BinaryRunsUnderQemu(t *testing.T) {
	qemu := ""
	for _, name := range []string{"qemu-aarch64", "qemu-aarch64-static"} {
		if path, err := exec.LookPath(name); err == nil {
			qemu = path
			break
		}
	}
	if qemu == "" {
		t.Fatal("qemu-aarch64 not found: run the tests with `make test` (scripts/test installs Debian's qemu-user)")
	}
	binary := "exe/aarch64-linux/dynocycle"
	_, bodies := gemContents(t, gemFile("aarch64-linux"), binary)
	path := filepath.Join(t.TempDir(), "dynocycle")
	if err := os.WriteFile(path, bodies[binary], 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(qemu, path, "version").CombinedOutput()
	if err != nil || string(out) != "dynocycle "+version+"\n" {
		t.Fatalf("qemu-aarch64 dynocycle version: %v %q, want %q", err, out, "dynocycle "+version+"\n")
	}
}

// The x86_64 gem installed with the system `gem` into a scratch GEM_HOME:
// its executable is the binary (exec, not a Ruby parent), prints VERSION,
// and passes the binary's exit code through.
func TestInstalledGemExecsTheBinary(t *testing.T) {
	need(t, "gem")
	s := newScratch(t)
	s.mustRun(t, s.dir, "gem", "install", "--local", "--no-document", gemFile("x86_64-linux"))
	exe := filepath.Join(s.gemHome, "bin", "dynocycle")

	if out := s.mustRun(t, s.dir, exe, "version"); out != "dynocycle "+version+"\n" {
		t.Errorf("dynocycle version printed %q, want %q", out, "dynocycle "+version+"\n")
	}
	// The CLI's own usage error, exit code 2, comes through unchanged.
	if _, stderr, code := s.run(t, s.dir, exe, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("dynocycle frobnicate: exit %d %q, want 2 and the CLI's error", code, stderr)
	}

	// Running, the process RubyGems' wrapper started is the binary itself.
	cmd := exec.Command(exe, "run", "--", "sleep", "60")
	cmd.Env = s.env("MAX_RSS=1GB")
	out := startCollecting(t, cmd)
	binary := filepath.Join(s.gemHome, "gems", "dynocycle-"+version+"-x86_64-linux", "exe", "x86_64-linux", "dynocycle")
	waitForExe(t, cmd.Process.Pid, binary, out)
	// The agent takes TERM from before it starts the worker.
	eventually(t, time.Minute, "the worker to start", out, func() bool { return out.has("event=worker_start") })
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// sleep dies of the forwarded TERM; the agent reports it as 128+15.
	if code := waitExit(t, cmd, out); code != 143 {
		t.Errorf("exit code %d after TERM to a wrapped sleep, want 143\n%s", code, out)
	}
}

// The plain gem, installed where no native gem fits, says in one line which
// platform has no binary and how to add it.
func TestPlainGemNamesTheMissingPlatform(t *testing.T) {
	need(t, "gem")
	s := newScratch(t)
	s.mustRun(t, s.dir, "gem", "install", "--local", "--no-document", gemFile("ruby"))
	local := strings.TrimSpace(s.mustRun(t, s.dir, "ruby", "-e", "print Gem::Platform.local"))
	stdout, stderr, code := s.run(t, s.dir, filepath.Join(s.gemHome, "bin", "dynocycle"), "version")
	if code != 1 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
	}
	if strings.Count(stderr, "\n") != 1 {
		t.Errorf("error is not one line: %q", stderr)
	}
	wants := []string{"no binary for " + local, "bundle lock --add-platform " + local}
	for platform := range nativePlatforms {
		wants = append(wants, platform)
	}
	for _, want := range wants {
		if !strings.Contains(stderr, want) {
			t.Errorf("error %q does not say %q", stderr, want)
		}
	}
}

// The Ruby side's own tests: which binary the executable picks on each kind
// of machine (test/binary_test.rb, minitest from Ruby's bundled gems).
func TestRubyPicksTheBinaryForThePlatform(t *testing.T) {
	need(t, "ruby")
	out, err := exec.Command("ruby", "-Ilib", "test/binary_test.rb").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^[1-9]\d* runs, \d+ assertions, 0 failures, 0 errors, 0 skips$`).Match(out) {
		t.Fatalf("ruby -Ilib test/binary_test.rb: %v\n%s", err, out)
	}
}

// app is a directory with a Gemfile, installed with `bundle install
// --local` (no network) into the scratch GEM_HOME.
func (s *scratch) app(t *testing.T, gemfile string, setup func(dir string)) string {
	t.Helper()
	need(t, "bundle")
	dir := filepath.Join(s.dir, "app")
	if err := os.MkdirAll(filepath.Join(dir, "vendor"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Gemfile"), []byte(gemfile), 0o644); err != nil {
		t.Fatal(err)
	}
	setup(dir)
	s.mustRun(t, dir, "bundle", "install", "--local")
	return dir
}

// A scratch app whose Gemfile names the unpacked x86_64 gem by path, with
// Debian's Sidekiq: `bundle exec dynocycle version` prints VERSION, and the
// Procfile line `bundle exec dynocycle run -- bundle exec sidekiq` runs the
// agent as the process that was started, around a real Sidekiq. TERM to that
// process lets the job in flight finish and Sidekiq stop gracefully; the
// agent exits with Sidekiq's code, 0. A worker that exits 3 on TERM makes
// the agent exit 3.
func TestBundlerPathGemRunsTheProcfileLine(t *testing.T) {
	need(t, "gem", "bundle", "sidekiq")
	s := newScratch(t)
	unpacked := "vendor/dynocycle-" + version + "-x86_64-linux"
	app := s.app(t, "source \"https://rubygems.org\"\n\ngem \"sidekiq\"\ngem \"dynocycle\", path: \""+unpacked+"\"\n",
		func(dir string) {
			s.mustRun(t, dir, "gem", "unpack", gemFile("x86_64-linux"), "--target", "vendor")
		})
	lock, err := os.ReadFile(filepath.Join(app, "Gemfile.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "dynocycle (" + version + "-x86_64-linux)"; !strings.Contains(string(lock), want) {
		t.Errorf("Gemfile.lock does not lock %q:\n%s", want, lock)
	}
	if out := s.mustRun(t, app, "bundle", "exec", "dynocycle", "version"); out != "dynocycle "+version+"\n" {
		t.Errorf("bundle exec dynocycle version printed %q, want %q", out, "dynocycle "+version+"\n")
	}
	binary := filepath.Join(app, unpacked, "exe", "x86_64-linux", "dynocycle")

	t.Run("sidekiq", func(t *testing.T) {
		jobs, err := filepath.Abs("../examples/sidekiq/jobs.rb")
		if err != nil {
			t.Fatal(err)
		}
		srv := testredis.Start(t)
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { rdb.Close() })
		ctx := context.Background()

		cmd := exec.Command("bundle", "exec", "dynocycle", "run", "--",
			"bundle", "exec", "sidekiq", "-r", jobs, "-c", "2", "-t", "10", "-q", "default")
		cmd.Dir, cmd.Env = app, s.env("REDIS_URL="+srv.URL(), "MAX_RSS=2GB", "DYNO=worker.1", "FLEET_SCOPE=gem-test")
		out := startCollecting(t, cmd)
		waitForExe(t, cmd.Process.Pid, binary, out)

		// One job of 2 s, in flight when the TERM comes.
		enqueue := exec.Command("bundle", "exec", "ruby", filepath.Join(filepath.Dir(jobs), "enqueue.rb"), "1", "SlowJob", "2")
		enqueue.Dir, enqueue.Env = app, s.env("REDIS_URL="+srv.URL())
		if b, err := enqueue.CombinedOutput(); err != nil {
			t.Fatalf("enqueue: %v\n%s", err, b)
		}
		eventually(t, time.Minute, "the job to start", out, func() bool {
			ok, _ := rdb.SIsMember(ctx, "dynocycle:test:started", "1").Result()
			return ok
		})
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, cmd, out); code != 0 {
			t.Errorf("exit code %d after TERM, want Sidekiq's 0\n%s", code, out)
		}
		if done, _ := rdb.SIsMember(ctx, "dynocycle:test:done", "1").Result(); !done {
			t.Errorf("the job in flight did not finish before Sidekiq stopped\n%s", out)
		}
		lifecycle, err := rdb.LRange(ctx, "dynocycle:test:lifecycle", 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(lifecycle, func(e string) bool { return strings.Contains(e, " shutdown ") }) {
			t.Errorf("Sidekiq never began its shutdown (lifecycle %v)\n%s", lifecycle, out)
		}
		if !strings.Contains(out.String(), "Bye!") {
			t.Errorf("Sidekiq did not finish its shutdown (no Bye!)\n%s", out)
		}
	})

	t.Run("exit code", func(t *testing.T) {
		cmd := exec.Command("bundle", "exec", "dynocycle", "run", "--",
			"sh", "-c", `trap 'echo stopping gracefully; exit 3' TERM; echo ready; while :; do sleep 0.05; done`)
		cmd.Dir, cmd.Env = app, s.env("MAX_RSS=2GB")
		out := startCollecting(t, cmd)
		eventually(t, time.Minute, "the worker to start", out, func() bool { return out.has("ready") })
		waitForExe(t, cmd.Process.Pid, binary, out)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, cmd, out); code != 3 || !out.has("stopping gracefully") {
			t.Errorf("exit code %d after TERM, want the worker's 3 after its trap ran\n%s", code, out)
		}
	})
}

// The route `bundle add dynocycle` takes: the Gemfile names the gem plainly
// and Bundler chooses among the plain and the native gems (here from
// vendor/cache, offline). It locks and installs the x86_64 gem, whose
// executable and binstub run the binary.
func TestBundlerChoosesTheNativeGem(t *testing.T) {
	need(t, "gem", "bundle")
	s := newScratch(t)
	app := s.app(t, "source \"https://rubygems.org\"\n\ngem \"dynocycle\"\n", func(dir string) {
		cache := filepath.Join(dir, "vendor", "cache")
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, platform := range []string{"ruby", "x86_64-linux", "aarch64-linux"} {
			b, err := os.ReadFile(gemFile(platform))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cache, filepath.Base(gemFile(platform))), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	lock, err := os.ReadFile(filepath.Join(app, "Gemfile.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "    dynocycle (" + version + "-x86_64-linux)\n"; !strings.Contains(string(lock), want) {
		t.Errorf("Gemfile.lock does not lock the x86_64 gem %q:\n%s", want, lock)
	}
	if out := s.mustRun(t, app, "bundle", "exec", "dynocycle", "version"); out != "dynocycle "+version+"\n" {
		t.Errorf("bundle exec dynocycle version printed %q", out)
	}
	s.mustRun(t, app, "bundle", "binstubs", "dynocycle")
	if out := s.mustRun(t, app, "bin/dynocycle", "version"); out != "dynocycle "+version+"\n" {
		t.Errorf("bin/dynocycle version printed %q", out)
	}
}

// output collects a process's stdout and stderr lines.
type output struct {
	mu    sync.Mutex
	lines []string
}

func (o *output) has(s string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.ContainsFunc(o.lines, func(l string) bool { return strings.Contains(l, s) })
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return strings.Join(o.lines, "\n")
}

// startCollecting starts cmd with its output collected, and kills its
// process group if the test ends with it still running.
func startCollecting(t *testing.T, cmd *exec.Cmd) *output {
	t.Helper()
	out := &output{}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.mu.Lock()
			out.lines = append(out.lines, sc.Text())
			out.mu.Unlock()
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			// The agent runs its worker in a process group of its own.
			children, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", cmd.Process.Pid))
			for _, f := range children {
				b, _ := os.ReadFile(f)
				for _, p := range strings.Fields(string(b)) {
					var pid int
					if _, err := fmt.Sscan(p, &pid); err == nil {
						_ = syscall.Kill(-pid, syscall.SIGKILL)
					}
				}
			}
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
		pw.Close()
	})
	return out
}

// waitExit waits up to a minute for cmd to exit and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd, out *output) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("wait: %v", err)
		}
		return cmd.ProcessState.ExitCode()
	case <-time.After(time.Minute):
		t.Fatalf("still running a minute after TERM\n%s", out)
		return 0
	}
}

// waitForExe waits until process pid runs binary: Ruby exec'd the agent in
// place, so the process Heroku signals is the agent.
func waitForExe(t *testing.T, pid int, binary string, out *output) {
	t.Helper()
	want, err := filepath.EvalSymlinks(binary)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && exe == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d runs %q (%v), want %s\n%s", pid, exe, err, want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func eventually(t *testing.T, timeout time.Duration, what string, out *output, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s\n%s", timeout, what, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
