package deviceplugin

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
)

// KubeletSocketName is the kubelet's registration socket in the plugin dir.
const KubeletSocketName = "kubelet.sock"

// Manager runs plugins and keeps them registered: at start, when the kubelet
// re-creates kubelet.sock, and when a plugin's socket is deleted under it.
type Manager struct {
	dir string
	log *slog.Logger
	obs Observer

	mu      sync.Mutex
	plugins map[string]*managed
	ctx     context.Context // set by Run
}

type managed struct {
	p    *Plugin
	kick chan kick
	stop context.CancelFunc
	done chan struct{} // closed when the loop ends
	// registered is true once the plugin registered with the current kubelet.
	registered atomic.Bool
	// kubeletID identifies the kubelet.sock last registered with (only the
	// loop touches it).
	kubeletID sockID
}

// sockID identifies one incarnation of a socket file.
type sockID struct{ dev, ino uint64 }

func statSock(path string) (sockID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return sockID{}, err
	}
	return sockID{uint64(st.Dev), st.Ino}, nil
}

type kick struct {
	restart bool      // restart the server even if its socket is still there
	rereg   bool      // a kubelet restart or lost socket caused this
	at      time.Time // when the cause was seen
}

// NewManager returns a manager for the kubelet device-plugins dir.
func NewManager(dir string, obs Observer, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{dir: dir, obs: obs, log: log, plugins: map[string]*managed{}}
}

// Dir returns the plugin directory.
func (m *Manager) Dir() string { return m.dir }

func (m *Manager) kubeletSocket() string { return filepath.Join(m.dir, KubeletSocketName) }

// Run watches the directory until ctx is done, then stops every plugin.
// Plugins may be added before or while it runs.
func (m *Manager) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", m.dir, err)
	}
	defer w.Close()
	if err := os.MkdirAll(m.dir, 0o750); err != nil {
		return fmt.Errorf("device-plugins dir: %w", err)
	}
	if err := w.Add(m.dir); err != nil {
		return fmt.Errorf("watch %s: %w", m.dir, err)
	}
	m.mu.Lock()
	m.ctx = ctx
	for _, mp := range m.plugins {
		m.startLoop(mp)
	}
	m.mu.Unlock()
	defer m.stopAll()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			m.handle(ev)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			m.log.Warn("device-plugins dir watch error", "err", err)
		}
	}
}

func (m *Manager) handle(ev fsnotify.Event) {
	now := time.Now()
	name := filepath.Base(ev.Name)
	if name == KubeletSocketName && ev.Has(fsnotify.Create) {
		m.log.Info("kubelet.sock created (kubelet (re)started): re-registering every pool")
		m.mu.Lock()
		for _, mp := range m.plugins {
			send(mp, kick{rereg: true, at: now})
		}
		m.mu.Unlock()
		return
	}
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, mp := range m.plugins {
			if name == SocketName(mp.p.pool) && mp.registered.Load() && !mp.p.Running() {
				m.log.Warn("plugin socket deleted (kubelet restart?): restarting the server", "pool", mp.p.pool)
				send(mp, kick{restart: true, rereg: true, at: now})
			}
		}
	}
}

func send(mp *managed, k kick) {
	// The newest kick wins: drain a pending one, merging its flags.
	select {
	case old := <-mp.kick:
		k.restart = k.restart || old.restart
		k.rereg = k.rereg || old.rereg
		if !old.at.IsZero() && old.at.Before(k.at) {
			k.at = old.at
		}
	default:
	}
	select {
	case mp.kick <- k:
	default:
	}
}

// Add starts a plugin (replacing one of the same pool) and registers it.
func (m *Manager) Add(p *Plugin) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.plugins[p.pool]; old != nil {
		m.stopPlugin(old)
	}
	mp := &managed{p: p, kick: make(chan kick, 1)}
	m.plugins[p.pool] = mp
	if m.ctx != nil {
		m.startLoop(mp)
	}
}

// Remove stops and forgets the plugin of pool. The kubelet then sees the
// resource's devices disappear; existing allocations are unaffected.
func (m *Manager) Remove(pool string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mp := m.plugins[pool]; mp != nil {
		m.stopPlugin(mp)
		delete(m.plugins, pool)
	}
}

// Plugin returns the plugin of pool, or nil.
func (m *Manager) Plugin(pool string) *Plugin {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mp := m.plugins[pool]; mp != nil {
		return mp.p
	}
	return nil
}

// NotifyAll makes every plugin re-check its devices.
func (m *Manager) NotifyAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mp := range m.plugins {
		mp.p.Notify()
	}
}

func (m *Manager) startLoop(mp *managed) {
	ctx, cancel := context.WithCancel(m.ctx)
	mp.stop = cancel
	mp.done = make(chan struct{})
	send(mp, kick{restart: true, at: time.Now()})
	go func() {
		defer close(mp.done)
		m.loop(ctx, mp)
	}()
}

// stopPlugin ends the plugin's loop, then its server. Called with m.mu held
// (the loop never takes m.mu).
func (m *Manager) stopPlugin(mp *managed) {
	if mp.stop != nil {
		mp.stop()
		<-mp.done
	}
	mp.p.Stop()
}

func (m *Manager) stopAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mp := range m.plugins {
		m.stopPlugin(mp)
	}
	m.ctx = nil
}

// loop serves one plugin's kicks: restart the server if asked, then register
// with retries until it works or a newer kick arrives. A missing
// kubelet.sock is waited for (its creation kicks again), not polled.
func (m *Manager) loop(ctx context.Context, mp *managed) {
	log := m.log.With("pool", mp.p.pool)
	for {
		var k kick
		select {
		case <-ctx.Done():
			return
		case k = <-mp.kick:
		}
		restarted := false
		if k.restart || !mp.p.Running() {
			mp.registered.Store(false)
			restarted = true
			if err := mp.p.Start(); err != nil {
				log.Error("start device plugin server; retrying", "err", err)
				if m.obs != nil {
					m.obs.Registered(mp.p.pool, k.rereg, err)
				}
				nk := k
				if !m.retryWait(ctx, mp, &nk, time.Second) {
					return
				}
				nk.restart = true
				send(mp, nk)
				continue
			}
		}
		backoff := 5 * time.Millisecond
		for {
			id, err := statSock(m.kubeletSocket())
			if err != nil {
				mp.registered.Store(false)
				log.Info("waiting for the kubelet: kubelet.sock not present", "dir", m.dir)
				break
			}
			if !restarted && mp.registered.Load() && id == mp.kubeletID {
				break // already registered with this kubelet (coalesced kicks)
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = mp.p.Register(rctx, m.kubeletSocket())
			cancel()
			if m.obs != nil {
				m.obs.Registered(mp.p.pool, k.rereg, err)
			}
			if err == nil {
				mp.kubeletID = id
				mp.registered.Store(true)
				if k.rereg {
					log.Info("re-registered with the kubelet", "delay", time.Since(k.at))
				} else {
					log.Info("registered with the kubelet")
				}
				break
			}
			log.Warn("registration failed; retrying", "err", err, "in", backoff)
			nk := k
			if !m.retryWait(ctx, mp, &nk, backoff) {
				return
			}
			if nk != k { // a newer kick: handle it from the top
				send(mp, nk)
				break
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// retryWait waits d, or until a new kick (stored in k) or ctx end (false).
func (m *Manager) retryWait(ctx context.Context, mp *managed, k *kick, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case nk := <-mp.kick:
		*k = nk
		return true
	case <-t.C:
		return true
	}
}
