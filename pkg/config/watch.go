package config

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher reloads the config file when it changes or when Trigger is called
// (the agent calls it on SIGHUP).
//
// It watches the file's directory, not the file: a ConfigMap volume updates
// by swapping the "..data" symlink, which never writes the file itself, and
// editors replace files by rename. Events are debounced; the file is re-read
// and handed to OnChange only when its bytes changed. A file that fails to
// parse is reported to OnError and the previous config stays in force.
type Watcher struct {
	Path     string
	OnChange func(*Config)
	OnError  func(error)
	// Debounce coalesces bursts of events (default 100 ms).
	Debounce time.Duration
	Logger   *slog.Logger

	trigger chan struct{}
}

// NewWatcher returns a watcher for path; logger may be nil.
func NewWatcher(path string, onChange func(*Config), onError func(error), logger *slog.Logger) *Watcher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{Path: path, OnChange: onChange, OnError: onError, Debounce: 100 * time.Millisecond,
		Logger: logger, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a reload even when no file event arrived (SIGHUP). A
// triggered reload reports the config even when the bytes are unchanged.
func (w *Watcher) Trigger() {
	select {
	case w.trigger <- struct{}{}:
	default:
	}
}

// Run watches until ctx is done. last is the content of the config already
// in force; Run re-reads the file once after the watch is in place, so a
// change made after the caller's read is not lost (OnChange or OnError
// then fires once before any event).
func (w *Watcher) Run(ctx context.Context, last []byte) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("config watch: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(w.Path)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("config watch %s: %w", dir, err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	forced := false
	reload := func() {
		b, err := os.ReadFile(w.Path)
		if err != nil {
			w.report(fmt.Errorf("read config %s: %w", w.Path, err))
			return
		}
		if !forced && bytes.Equal(b, last) {
			return
		}
		forced = false
		c, err := Parse(b)
		if err != nil {
			w.report(fmt.Errorf("config %s: %w (keeping the previous config)", w.Path, err))
			return
		}
		last = b
		w.Logger.Info("config reloaded", "path", w.Path, "pools", len(c.Pools))
		if w.OnChange != nil {
			w.OnChange(c)
		}
	}
	// A change between the caller's read (last) and the watch would have
	// no event: read once now that the watch is in place.
	reload()
	base := filepath.Base(w.Path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			// The file itself, or the ConfigMap's "..data" symlink swap.
			n := filepath.Base(ev.Name)
			if n == base || n == "..data" {
				timer.Reset(w.Debounce)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.Logger.Warn("config watch error", "err", err)
		case <-w.trigger:
			forced = true
			reload()
		case <-timer.C:
			reload()
		}
	}
}

func (w *Watcher) report(err error) {
	w.Logger.Error("config reload failed", "err", err)
	if w.OnError != nil {
		w.OnError(err)
	}
}
