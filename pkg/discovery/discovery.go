// Package discovery finds the node's network ports from sysfs and keeps the
// list current on netlink link events.
//
// For every netdev under <root>/class/net it reads the driver (basename of the
// device/driver symlink), the PCI address (basename of the device symlink),
// the NUMA node (device/numa_node; -1 or absent = unknown), the MAC, the
// ifindex and the link state (operstate, carrier). Virtual devices (veth,
// bridges, ...) have no device symlink, so their driver and PCI address are
// empty; select them by interface name. Ports driven by sfc, sfc_efct or
// xilinx_efct are Solarflare ports, usable by hardware pools.
//
// The sysfs root is a field so tests run against a fake tree; the event
// source is an interface so tests can inject link events.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// IsSolarflareDriver reports whether driver is a Solarflare/AMD ef_vi driver:
// sfc, sfc_efct or xilinx_efct.
func IsSolarflareDriver(driver string) bool {
	switch driver {
	case "sfc", "sfc_efct", "xilinx_efct":
		return true
	}
	return false
}

// NUMAUnknown is Port.NUMANode when the kernel does not know the node.
const NUMAUnknown = -1

// Port is one netdev.
type Port struct {
	Name       string
	Index      int
	Driver     string // "" for virtual devices
	PCIAddress string // "" when not a PCI device
	NUMANode   int    // NUMAUnknown when unknown
	MAC        string // lower-case, colon-separated
	OperState  string // operstate: up, down, lowerlayerdown, unknown, ...
	Carrier    bool
}

// Solarflare reports whether the port is driven by a Solarflare driver.
func (p Port) Solarflare() bool { return IsSolarflareDriver(p.Driver) }

// LinkUp reports whether the link can pass traffic: operstate "up", or
// "unknown" with carrier (drivers that do not track operstate).
func (p Port) LinkUp() bool {
	return p.OperState == "up" || (p.OperState == "unknown" && p.Carrier)
}

// Scanner reads ports from sysfs.
type Scanner struct {
	// Root is the sysfs mount point ("/sys" when empty).
	Root string
}

func (s Scanner) root() string {
	if s.Root == "" {
		return "/sys"
	}
	return s.Root
}

// Scan returns all netdevs except loopback, sorted by name. A netdev that
// vanishes mid-scan is skipped.
func (s Scanner) Scan() ([]Port, error) {
	dir := filepath.Join(s.root(), "class", "net")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w (is sysfs mounted?)", dir, err)
	}
	ports := make([]Port, 0, len(ents))
	for _, e := range ents {
		name := e.Name()
		if name == "lo" || strings.HasPrefix(name, ".") {
			continue
		}
		p, err := s.port(filepath.Join(dir, name), name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // went away while scanning
		}
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i].Name < ports[j].Name })
	return ports, nil
}

func (s Scanner) port(dir, name string) (Port, error) {
	p := Port{Name: name, NUMANode: NUMAUnknown}
	idx, err := readTrim(filepath.Join(dir, "ifindex"))
	if err != nil {
		return p, fmt.Errorf("port %s: %w", name, err)
	}
	if p.Index, err = strconv.Atoi(idx); err != nil {
		return p, fmt.Errorf("port %s: ifindex %q: %w", name, idx, err)
	}
	if mac, err := readTrim(filepath.Join(dir, "address")); err == nil {
		p.MAC = strings.ToLower(mac)
	}
	if st, err := readTrim(filepath.Join(dir, "operstate")); err == nil {
		p.OperState = st
	}
	// carrier reads EINVAL while the interface is administratively down.
	if c, err := readTrim(filepath.Join(dir, "carrier")); err == nil {
		p.Carrier = c == "1"
	}
	dev := filepath.Join(dir, "device")
	if target, err := os.Readlink(dev); err == nil {
		if isPCIAddress(filepath.Base(target)) {
			p.PCIAddress = filepath.Base(target)
		}
		if drv, err := os.Readlink(filepath.Join(dev, "driver")); err == nil {
			p.Driver = filepath.Base(drv)
		}
		if n, err := readTrim(filepath.Join(dev, "numa_node")); err == nil {
			if v, err := strconv.Atoi(n); err == nil && v >= 0 {
				p.NUMANode = v
			}
		}
	}
	return p, nil
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// isPCIAddress matches dddd:bb:dd.f.
func isPCIAddress(s string) bool {
	if len(s) != 12 || s[4] != ':' || s[7] != ':' || s[10] != '.' {
		return false
	}
	for i, c := range s {
		if i == 4 || i == 7 || i == 10 {
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Events delivers "something about links changed" notifications.
type Events interface {
	// Subscribe starts delivering; the channel is closed when ctx is done or
	// the source fails (Watch then resubscribes).
	Subscribe(ctx context.Context) (<-chan struct{}, error)
}

// Watch scans once, calls onChange with the result, then rescans on every
// event (coalescing bursts) and every resync interval, calling onChange
// when the port list differs from the last one reported. Scan errors are
// logged and retried at the next event or resync; they never end the watch.
// It returns when ctx is done.
type Watch struct {
	Scanner  Scanner
	Events   Events        // nil: periodic resync only
	Resync   time.Duration // default 30 s
	Debounce time.Duration // default 50 ms
	Logger   *slog.Logger
	OnChange func([]Port)
}

// Run runs the watch until ctx is done.
func (w *Watch) Run(ctx context.Context) error {
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	resync := w.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	debounce := w.Debounce
	if debounce <= 0 {
		debounce = 50 * time.Millisecond
	}
	var last []Port
	first := true
	scan := func() {
		ports, err := w.Scanner.Scan()
		if err != nil {
			log.Error("port scan failed; retrying on the next link event or resync", "err", err)
			return
		}
		if !first && slices.Equal(ports, last) {
			return
		}
		first = false
		last = ports
		w.OnChange(ports)
	}
	scan()

	var events <-chan struct{}
	subscribe := func() {
		if w.Events == nil {
			return
		}
		ch, err := w.Events.Subscribe(ctx)
		if err != nil {
			log.Error("link event subscription failed; relying on periodic resync", "err", err, "resync", resync)
			events = nil
			return
		}
		events = ch
	}
	subscribe()

	tick := time.NewTicker(resync)
	defer tick.Stop()
	pending := time.NewTimer(time.Hour)
	pending.Stop()
	defer pending.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				log.Warn("link event source closed; resubscribing")
				subscribe()
				scan()
				continue
			}
			pending.Reset(debounce)
		case <-pending.C:
			scan()
		case <-tick.C:
			if events == nil {
				subscribe()
			}
			scan()
		}
	}
}
