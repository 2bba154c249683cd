package allocator

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// checkpointer writes checkpoint snapshots in the background, always the
// latest one: Allocate hands over an encoded snapshot and returns without
// waiting for the disk (decision: the kubelet waits on Allocate, and the file
// write was most of its latency). A crash between an Allocate and its write
// loses nothing that matters: on restart, Reconcile adopts every device the
// kubelet's PodResources still reports. Flush waits for the disk.
// coalesce is how long the writer waits after a change before writing.
const coalesce = 5 * time.Millisecond

type checkpointer struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	cond    *sync.Cond
	pending [][]byte
	gen     uint64 // snapshots handed over
	done    uint64 // last snapshot written (or whose write failed)
	err     error  // result of the last write
	running bool
	closed  bool
}

func newCheckpointer(path string, log *slog.Logger) *checkpointer {
	c := &checkpointer{path: path, log: log}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// submit hands over a snapshot; the writer goroutine starts on first use.
func (c *checkpointer) submit(encoded [][]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = encoded
	c.gen++
	if !c.running && !c.closed {
		c.running = true
		go c.loop()
	}
	c.cond.Broadcast()
}

func (c *checkpointer) loop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for c.done == c.gen && !c.closed {
			c.cond.Wait()
		}
		if c.done == c.gen { // closed and nothing left to write
			c.running = false
			c.cond.Broadcast()
			return
		}
		// Let a burst of Allocates coalesce into one write (the kubelet
		// admits a pod's containers back to back).
		c.mu.Unlock()
		time.Sleep(coalesce)
		c.mu.Lock()
		snap, g := c.pending, c.gen
		c.mu.Unlock()
		err := writeEncoded(c.path, snap)
		c.mu.Lock()
		c.done, c.err = g, err
		if err != nil {
			c.log.Error("allocation checkpoint not written (the next change retries; a restart reconciles with the kubelet)", "path", c.path, "err", err)
		}
		c.cond.Broadcast()
	}
}

// flush waits until every snapshot handed over so far is on disk.
func (c *checkpointer) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.gen
	for c.done < g && c.running {
		c.cond.Wait()
	}
	if c.done < g {
		return fmt.Errorf("checkpoint %s: writer stopped before the last snapshot", c.path)
	}
	if c.err != nil {
		return fmt.Errorf("save allocation checkpoint: %w", c.err)
	}
	return nil
}

// close writes what is pending and stops the writer.
func (c *checkpointer) close() error {
	err := c.flush()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.cond.Broadcast()
	for c.running {
		c.cond.Wait()
	}
	return err
}
