// Package memory measures the worker's memory through procfs and cgroups, the
// way the platform counts it: resident plus swapped memory.
package memory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// Sources a Meter can read.
const (
	Tree   = "tree"   // RSS + swap summed over the worker's process tree
	PSS    = "pss"    // proportional set size + swap over the tree, for forked workers sharing pages
	Cgroup = "cgroup" // the container's usage: what Heroku counts for the dyno
	All    = "all"    // RSS + swap of every process visible in procfs
)

// Meter samples memory from one source.
type Meter struct {
	Source string
	// Root is the procfs mount point.
	Root string
	// CgroupRoot is where the cgroup filesystem is mounted.
	CgroupRoot string
	// PID returns the worker's pid (the root of the tree); 0 means none.
	PID func() int
	// TreeRefresh is how long a walked process tree is trusted: samples in
	// between read only the known processes. Walking the tree costs a
	// directory read and a file read per thread of every process, which a
	// Ruby worker with dozens of threads makes the larger part of a sample.
	TreeRefresh time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	fs procfs.FS

	mu       sync.Mutex
	tree     []int
	treeRoot int
	treeAt   time.Time
	buf      []byte
}

// DefaultTreeRefresh matches the default check interval, so scheduled checks
// walk the tree and the samples taken after each job do not.
const DefaultTreeRefresh = 5 * time.Second

// New returns a Meter for source over the procfs at root.
func New(source, root, cgroupRoot string, pid func() int) (*Meter, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, fmt.Errorf("open procfs: %w", err)
	}
	m := &Meter{Source: source, Root: root, CgroupRoot: cgroupRoot, PID: pid, TreeRefresh: DefaultTreeRefresh, Now: time.Now, fs: fs}
	switch source {
	case Tree, PSS, All:
	case Cgroup:
		if _, err := m.cgroupUsage(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown memory source %q", source)
	}
	return m, nil
}

// Auto picks the source that matches what the platform counts. On Heroku
// that is the whole dyno: its cgroup usage when readable, else every process.
// Elsewhere a restart in place frees only the worker's memory, so the worker's
// tree is what the limit applies to.
func Auto(onHeroku bool, root, cgroupRoot string, pid func() int) (*Meter, error) {
	// pid is nil when there is no worker command: then the whole machine is watched.
	if onHeroku {
		if m, err := New(Cgroup, root, cgroupRoot, pid); err == nil {
			return m, nil
		}
		return New(All, root, cgroupRoot, pid)
	}
	if pid == nil {
		return New(All, root, cgroupRoot, nil)
	}
	return New(Tree, root, cgroupRoot, pid)
}

// Sample returns the memory in bytes.
func (m *Meter) Sample(context.Context) (uint64, error) {
	switch m.Source {
	case Cgroup:
		return m.cgroupUsage()
	case All:
		return m.allProcs()
	}
	pid := 0
	if m.PID != nil {
		pid = m.PID()
	}
	if pid == 0 {
		return 0, errors.New("no worker process to measure")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if now := m.Now(); pid != m.treeRoot || now.Sub(m.treeAt) >= m.TreeRefresh {
		pids, err := m.Tree(pid)
		if err != nil {
			return 0, err
		}
		m.tree, m.treeRoot, m.treeAt = pids, pid, now
	}
	var total uint64
	live := m.tree[:0]
	for _, p := range m.tree {
		n, err := m.procMemory(p)
		if err != nil {
			if p == pid {
				m.tree, m.treeRoot = nil, 0
				return 0, err
			}
			continue // a descendant that exited: forget it
		}
		live = append(live, p)
		total += n
	}
	m.tree = live
	return total, nil
}

func (m *Meter) procMemory(pid int) (uint64, error) {
	if m.Source == PSS {
		proc, err := m.fs.Proc(pid)
		if err != nil {
			return 0, fmt.Errorf("read process %d: %w", pid, err)
		}
		r, err := proc.ProcSMapsRollup()
		if err != nil {
			return 0, fmt.Errorf("read smaps_rollup of %d: %w", pid, err)
		}
		return r.Pss + r.SwapPss, nil
	}
	return m.statusMemory(pid)
}

// statusMemory reads VmRSS and VmSwap from /proc/<pid>/status. procfs's
// NewStatus parses all fifty-odd fields into strings and maps, which costs
// about half as much again as the read itself; on the per-job path only two
// fields are needed, so they are picked out of a reused buffer.
func (m *Meter) statusMemory(pid int) (uint64, error) {
	f, err := os.Open(filepath.Join(m.Root, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	defer f.Close()
	if m.buf == nil {
		m.buf = make([]byte, 8192)
	}
	n, err := io.ReadFull(f, m.buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	data := m.buf[:n]
	rss, okRSS := statusKB(data, "VmRSS:")
	swap, _ := statusKB(data, "VmSwap:")
	if !okRSS {
		return 0, nil // a zombie or kernel thread has no memory of its own
	}
	return (rss + swap) * 1024, nil
}

// statusKB finds "Key:   123 kB" in a status file.
func statusKB(data []byte, key string) (uint64, bool) {
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := data[i+len(key):]
	if nl := bytes.IndexByte(rest, '\n'); nl >= 0 {
		rest = rest[:nl]
	}
	rest = bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(rest), []byte("kB")))
	v, err := strconv.ParseUint(string(rest), 10, 64)
	return v, err == nil
}

func (m *Meter) allProcs() (uint64, error) {
	procs, err := m.fs.AllProcs()
	if err != nil {
		return 0, fmt.Errorf("list processes: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var total uint64
	for _, p := range procs {
		n, err := m.statusMemory(p.PID)
		if err != nil {
			continue // exited meanwhile, or a process we may not read
		}
		total += n
	}
	return total, nil
}

// Tree returns pid and all its descendants. It reads the kernel's
// /proc/<pid>/task/<tid>/children lists, which procfs does not expose; that
// costs a few small reads per process instead of a scan of every process on
// the machine. Without those files it falls back to such a scan.
func (m *Meter) Tree(pid int) ([]int, error) {
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		kids, err := m.children(pids[i])
		if errors.Is(err, errNoChildrenFile) {
			return m.treeByScan(pid)
		}
		if err != nil {
			if i == 0 {
				return nil, err
			}
			continue
		}
		pids = append(pids, kids...)
	}
	return pids, nil
}

var errNoChildrenFile = errors.New("children file not available")

func (m *Meter) children(pid int) ([]int, error) {
	taskDir := filepath.Join(m.Root, strconv.Itoa(pid), "task")
	tasks, err := os.ReadDir(taskDir)
	if err != nil {
		return nil, fmt.Errorf("read process %d: %w", pid, err)
	}
	var kids []int
	for _, t := range tasks {
		data, err := os.ReadFile(filepath.Join(taskDir, t.Name(), "children"))
		if errors.Is(err, os.ErrNotExist) {
			if _, statErr := os.Stat(filepath.Join(taskDir, t.Name())); statErr == nil {
				return nil, errNoChildrenFile
			}
			continue // the thread ended
		}
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(data) {
			if k, err := strconv.Atoi(string(f)); err == nil && k > 0 {
				kids = append(kids, k)
			}
		}
	}
	return kids, nil
}

func (m *Meter) treeByScan(pid int) ([]int, error) {
	procs, err := m.fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	kids := map[int][]int{}
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue
		}
		kids[st.PPID] = append(kids[st.PPID], p.PID)
	}
	pids := []int{pid}
	for i := 0; i < len(pids); i++ {
		pids = append(pids, kids[pids[i]]...)
	}
	return pids, nil
}

// cgroup files, v2 first, then v1.
func (m *Meter) cgroupUsage() (uint64, error) {
	for _, name := range []string{"memory.current", filepath.Join("memory", "memory.usage_in_bytes")} {
		for _, dir := range m.cgroupDirs() {
			if v, err := readUint(filepath.Join(dir, name)); err == nil {
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("no cgroup memory usage under %s (memory.current or memory/memory.usage_in_bytes)", m.CgroupRoot)
}

// Limit returns the memory limit of the container (cgroup v2 memory.max or
// v1 memory.limit_in_bytes), else the machine's total memory.
func (m *Meter) Limit() (uint64, string) {
	for _, name := range []string{"memory.max", filepath.Join("memory", "memory.limit_in_bytes")} {
		for _, dir := range m.cgroupDirs() {
			// "max" (v2) or a page-rounded huge number (v1) means no limit.
			if v, err := readUint(filepath.Join(dir, name)); err == nil && v < 1<<60 {
				return v, "cgroup"
			}
		}
	}
	if mi, err := m.fs.Meminfo(); err == nil && mi.MemTotal != nil {
		return *mi.MemTotal * 1024, "meminfo"
	}
	return 0, ""
}

// cgroupDirs lists where this process's cgroup files may be: its own cgroup
// v2 path below the mount (a host without a cgroup namespace), then the mount
// itself (a container, where the mount is the container's cgroup).
func (m *Meter) cgroupDirs() []string {
	dirs := []string{}
	if self, err := m.fs.Self(); err == nil {
		if cgs, err := self.Cgroups(); err == nil {
			for _, cg := range cgs {
				if cg.HierarchyID == 0 && cg.Path != "/" && cg.Path != "" {
					dirs = append(dirs, filepath.Join(m.CgroupRoot, cg.Path))
				}
			}
		}
	}
	return append(dirs, m.CgroupRoot)
}

func readUint(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}
