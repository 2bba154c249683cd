// Package sysfstest builds fake sysfs trees for tests of code that reads
// network ports from sysfs: class/net/<ifname> with ifindex, address,
// operstate, carrier and, for PCI ports, a device symlink to
// devices/pci0000:00/<pci> holding numa_node and a driver symlink — the same
// shape as the kernel's.
package sysfstest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// Port describes one fake netdev. Empty PCIAddress makes a virtual device
// (no device symlink). NUMANode -1 writes "-1" as the kernel does.
type Port struct {
	Name       string
	Index      int
	MAC        string
	Driver     string
	PCIAddress string
	NUMANode   int
	Up         bool
}

// Tree is a fake sysfs root.
type Tree struct {
	Root string
	t    testing.TB
}

// New makes an empty tree in a temporary directory.
func New(t testing.TB) *Tree {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "class", "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Tree{Root: root, t: t}
}

func (tr *Tree) write(path, v string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

// Add creates the port.
func (tr *Tree) Add(p Port) {
	tr.t.Helper()
	dir := filepath.Join(tr.Root, "class", "net", p.Name)
	tr.write(filepath.Join(dir, "ifindex"), strconv.Itoa(p.Index))
	tr.write(filepath.Join(dir, "address"), p.MAC)
	tr.SetLink(p.Name, p.Up)
	if p.PCIAddress == "" {
		return
	}
	devDir := filepath.Join(tr.Root, "devices", "pci0000:00", p.PCIAddress)
	tr.write(filepath.Join(devDir, "numa_node"), strconv.Itoa(p.NUMANode))
	if p.Driver != "" {
		drvDir := filepath.Join(tr.Root, "bus", "pci", "drivers", p.Driver)
		if err := os.MkdirAll(drvDir, 0o755); err != nil {
			tr.t.Fatal(err)
		}
		if err := os.Symlink(drvDir, filepath.Join(devDir, "driver")); err != nil {
			tr.t.Fatal(err)
		}
	}
	if err := os.Symlink(devDir, filepath.Join(dir, "device")); err != nil {
		tr.t.Fatal(err)
	}
}

// SetLink sets operstate/carrier as the kernel shows an up or down link.
func (tr *Tree) SetLink(name string, up bool) {
	tr.t.Helper()
	dir := filepath.Join(tr.Root, "class", "net", name)
	if up {
		tr.write(filepath.Join(dir, "operstate"), "up")
		tr.write(filepath.Join(dir, "carrier"), "1")
	} else {
		tr.write(filepath.Join(dir, "operstate"), "down")
		tr.write(filepath.Join(dir, "carrier"), "0")
	}
}

// Remove deletes the port (as on hot-unplug).
func (tr *Tree) Remove(name string) {
	tr.t.Helper()
	if err := os.RemoveAll(filepath.Join(tr.Root, "class", "net", name)); err != nil {
		tr.t.Fatal(err)
	}
}

// Events is an injectable link-event source: Fire sends one event to the
// current subscriber.
type Events struct {
	ch chan struct{}
}

// NewEvents returns an event source.
func NewEvents() *Events { return &Events{ch: make(chan struct{}, 16)} }

// Fire signals a link change.
func (e *Events) Fire() { e.ch <- struct{}{} }

// Subscribe implements discovery.Events.
func (e *Events) Subscribe(context.Context) (<-chan struct{}, error) { return e.ch, nil }
