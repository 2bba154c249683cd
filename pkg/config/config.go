// Package config reads, validates and watches the node agent's configuration:
// the VI pools it advertises to the kubelet and the agent's own settings
// (paths, CDI, metrics address).
//
// The file is YAML (usually mounted from a ConfigMap). Decoding is strict: an
// unknown field is an error that names the field. Validation collects every
// problem and names each by its field path and the fix, e.g.
//
//	pools[1].visPerPort: must be 1..1024, got 0; set it or remove the pool
//
// A minimal file:
//
//	version: v1
//	pools:
//	- name: fast
//	  backend: software
//	  selector: {interfaces: [eth1]}
//	  visPerPort: 8
//
// The top-level version field names the schema ([Version]). A file of a
// version this agent does not read is refused, with the supported list; a
// file without the field (written before it existed) is read as v1 and the
// agent logs a note asking for it.
//
// Reload semantics (see [Watcher]): a new file replaces the pool set, but
// allocations survive. A pool whose capacity shrinks keeps the slots already
// allocated beyond the new capacity until their pods go away; those slots are
// no longer advertised to the kubelet, so they are never issued again.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// Defaults for the agent settings and pools.
const (
	DefaultResourcePrefix     = "efvi.io"
	DefaultPluginDir          = "/var/lib/kubelet/device-plugins"
	DefaultPodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
	DefaultStateDir           = "/var/lib/efvi"
	DefaultBrokerDir          = "/run/efvi"
	DefaultCDIDir             = "/var/run/cdi"
	DefaultMetricsAddress     = ":9478"
	DefaultReconcileInterval  = 30 * time.Second
	DefaultAllocationGrace    = 60 * time.Second
	// DefaultHardwareVIsPerPort is the per-port slot count advertised for a
	// hardware port when the pool does not set visPerPort. The NIC's own
	// limit is far higher on every supported adapter; the driver enforces
	// the real one when the VI is created.
	DefaultHardwareVIsPerPort = 32
	// MaxVIsPerPort bounds visPerPort.
	MaxVIsPerPort = 1024
	// MetricsDisabled as agent.metricsAddress turns the metrics server off.
	MetricsDisabled = "off"
)

// Backend selects how a pool's VIs are made.
type Backend string

// Backends.
const (
	// Software VIs: XDP + AF_XDP on any netdev.
	Software Backend = "software"
	// Hardware VIs: ef_vi on a Solarflare/AMD port.
	Hardware Backend = "hardware"
)

// Policy chooses among free slots when the kubelet asks for a preferred
// allocation (after NUMA affinity).
type Policy string

// Policies.
const (
	// Spread prefers the port with the most free slots (isolation).
	Spread Policy = "spread"
	// Pack prefers the port with the fewest free slots (keeps ports whole).
	Pack Policy = "pack"
)

// Config is the whole file.
type Config struct {
	// Version is the schema version (see version.go); empty means v1.
	Version         string `json:"version,omitempty"`
	implicitVersion bool

	Agent Agent  `json:"agent,omitempty"`
	Pools []Pool `json:"pools,omitempty"`
}

// Agent holds the agent's own settings. Changing them needs an agent restart
// (a reload logs which ones changed and keeps the old values).
type Agent struct {
	// PluginDir is the kubelet device-plugins directory (kubelet.sock lives there).
	PluginDir string `json:"pluginDir,omitempty"`
	// PodResourcesSocket is the kubelet PodResources API socket.
	PodResourcesSocket string `json:"podResourcesSocket,omitempty"`
	// StateDir keeps the allocation checkpoint.
	StateDir string `json:"stateDir,omitempty"`
	// BrokerDir holds the per-allocation broker directories.
	BrokerDir string `json:"brokerDir,omitempty"`
	// CDI makes Allocate answer with CDI device names.
	CDI CDI `json:"cdi,omitempty"`
	// MetricsAddress is the Prometheus listen address; "off" disables it.
	MetricsAddress string `json:"metricsAddress,omitempty"`
	// ReconcileInterval is how often allocations are compared with the
	// kubelet PodResources API.
	ReconcileInterval Duration `json:"reconcileInterval,omitempty"`
	// AllocationGrace is how long an allocation the kubelet has not yet
	// reported (the pod is still being admitted) is kept.
	AllocationGrace Duration `json:"allocationGrace,omitempty"`
}

// CDI settings.
type CDI struct {
	Enabled bool   `json:"enabled,omitempty"`
	Dir     string `json:"dir,omitempty"`
}

// Pool is one extended resource, <resourcePrefix>/<name>.
type Pool struct {
	Name           string   `json:"name"`
	ResourcePrefix string   `json:"resourcePrefix,omitempty"`
	Backend        Backend  `json:"backend"`
	Selector       Selector `json:"selector,omitempty"`
	// VIsPerPort is the slot count per port. Required for software pools;
	// optional for hardware pools (default DefaultHardwareVIsPerPort).
	VIsPerPort   int          `json:"visPerPort,omitempty"`
	Policy       Policy       `json:"policy,omitempty"`
	FilterPolicy FilterPolicy `json:"filterPolicy,omitempty"`
	// Limits bound what one allocation (one container's VIs) may hold.
	Limits Limits `json:"limits,omitempty"`
}

// Limits bound the node resources one allocation may hold, so one pod
// cannot exhaust the node. They are counted per allocation over all its
// broker connections, and a VI's memory stays counted until the kernel has
// really freed it (every holder closed the VI's socket). Zero fields take
// the defaults below.
type Limits struct {
	// PinnedMemory bounds the packet memory (UMEM) the allocation's VIs
	// pin in the kernel, plus regions registered but not yet used, e.g.
	// "1Gi" (default DefaultPinnedMemory).
	PinnedMemory string `json:"pinnedMemory,omitempty"`
	// VIs bounds the allocation's live VI sockets, including ones its
	// earlier connections left open (default DefaultLimitVIs).
	VIs int `json:"vis,omitempty"`
	// Filters bounds the filters the allocation's SDK sessions add at run
	// time (default DefaultLimitFilters).
	Filters int `json:"filters,omitempty"`
	// Connections bounds concurrent broker sessions (default
	// DefaultLimitConnections).
	Connections int `json:"connections,omitempty"`
}

// Limit defaults: a 4-VI pod (4 x 16 MiB UMEM from the SDK, a handful of
// filters per VI, one connection per process) stays far below them, and a
// 2-core node with a few such pods keeps its memory.
const (
	DefaultPinnedMemory     = "1Gi"
	DefaultLimitVIs         = 16
	DefaultLimitFilters     = 512
	DefaultLimitConnections = 4
	// MaxLimitFilters is the data plane's filter capacity per port.
	MaxLimitFilters = 16384
)

// PinnedBytes returns the pinned-memory limit in bytes (the default's if
// unset or invalid; Validate reports invalid ones).
func (l Limits) PinnedBytes() uint64 {
	q, err := resource.ParseQuantity(l.PinnedMemory)
	if err != nil || q.Sign() <= 0 {
		q = resource.MustParse(DefaultPinnedMemory)
	}
	return uint64(q.Value())
}

// Selector picks ports. A port matches when it matches every non-empty list
// (lists are ANDed, entries within a list ORed). Hardware pools only ever
// take Solarflare ports; an empty hardware selector takes all of them.
type Selector struct {
	Interfaces   []string `json:"interfaces,omitempty"`
	Drivers      []string `json:"drivers,omitempty"`
	PCIAddresses []string `json:"pciAddresses,omitempty"`
	MACs         []string `json:"macs,omitempty"`
}

// FilterPolicy holds the filter allowances of pods using the pool.
type FilterPolicy struct {
	Default    Allowance            `json:"default,omitempty"`
	Namespaces map[string]Allowance `json:"namespaces,omitempty"`
}

// Allowance lists the filter kinds beyond "my own IPs" a pod may install.
type Allowance struct {
	// AllowMulticast permits joining multicast groups.
	AllowMulticast bool `json:"allowMulticast,omitempty"`
	// AllowWide permits sniff, all, mismatch and block-kernel filters.
	AllowWide bool `json:"allowWide,omitempty"`
}

// For returns the allowance for pods in namespace ns.
func (f FilterPolicy) For(ns string) Allowance {
	if a, ok := f.Namespaces[ns]; ok {
		return a
	}
	return f.Default
}

// ResourceName is the extended resource the pool advertises.
func (p Pool) ResourceName() string { return p.ResourcePrefix + "/" + p.Name }

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration struct{ time.Duration }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"30s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"30s\": %w", err)
	}
	d.Duration = v
	return nil
}

// Load reads and parses the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// maxConfigBytes bounds the file size: a ConfigMap is at most 1 MiB.
const maxConfigBytes = 1 << 20

// Parse decodes YAML strictly, fills defaults and validates. The returned
// error lists every problem found.
func Parse(data []byte) (*Config, error) {
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config is %d bytes, more than the %d a ConfigMap can hold", len(data), maxConfigBytes)
	}
	var c Config
	if len(bytes.TrimSpace(data)) > 0 {
		implicit, err := checkVersion(data)
		if err != nil {
			return nil, err
		}
		c.implicitVersion = implicit
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return nil, fmt.Errorf("decode: %w (field names are case-sensitive; see the package doc for the schema)", err)
		}
	}
	if c.Version == "" {
		c.Version = Version
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	a := &c.Agent
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&a.PluginDir, DefaultPluginDir)
	def(&a.PodResourcesSocket, DefaultPodResourcesSocket)
	def(&a.StateDir, DefaultStateDir)
	def(&a.BrokerDir, DefaultBrokerDir)
	def(&a.CDI.Dir, DefaultCDIDir)
	def(&a.MetricsAddress, DefaultMetricsAddress)
	if a.ReconcileInterval.Duration == 0 {
		a.ReconcileInterval.Duration = DefaultReconcileInterval
	}
	if a.AllocationGrace.Duration == 0 {
		a.AllocationGrace.Duration = DefaultAllocationGrace
	}
	for i := range c.Pools {
		p := &c.Pools[i]
		def(&p.ResourcePrefix, DefaultResourcePrefix)
		if p.Policy == "" {
			p.Policy = Spread
		}
		if p.Backend == Hardware && p.VIsPerPort == 0 {
			p.VIsPerPort = DefaultHardwareVIsPerPort
		}
		p.Limits.setDefaults()
	}
}

var (
	// DNS-1123 label: a pool name is part of a resource name, a CDI class,
	// an env var suffix and a path component.
	labelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// DNS-1123 subdomain.
	subdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	pciRE       = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)
	driverRE    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// Validate checks c (with defaults filled) and returns every problem, each
// naming its field path and the fix.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	a := c.Agent
	for _, f := range []struct{ path, v string }{
		{"agent.pluginDir", a.PluginDir},
		{"agent.podResourcesSocket", a.PodResourcesSocket},
		{"agent.stateDir", a.StateDir},
		{"agent.brokerDir", a.BrokerDir},
		{"agent.cdi.dir", a.CDI.Dir},
	} {
		if !strings.HasPrefix(f.v, "/") {
			add(f.path, "must be an absolute path, got %q", f.v)
		}
	}
	if a.MetricsAddress != MetricsDisabled {
		if _, _, err := net.SplitHostPort(a.MetricsAddress); err != nil {
			add("agent.metricsAddress", "must be host:port (e.g. \":9478\") or %q, got %q", MetricsDisabled, a.MetricsAddress)
		}
	}
	if a.ReconcileInterval.Duration < time.Second {
		add("agent.reconcileInterval", "must be at least 1s, got %s", a.ReconcileInterval.Duration)
	}
	if a.AllocationGrace.Duration < time.Second {
		add("agent.allocationGrace", "must be at least 1s, got %s", a.AllocationGrace.Duration)
	}

	names := map[string]int{}
	ifaceOwner := map[string]int{}
	for i, p := range c.Pools {
		pp := fmt.Sprintf("pools[%d]", i)
		switch {
		case p.Name == "":
			add(pp+".name", "is required; name the pool (a DNS label such as \"fast\")")
		case len(p.Name) > 63 || !labelRE.MatchString(p.Name):
			add(pp+".name", "must be a DNS label (lower-case letters, digits, '-', at most 63), got %q", p.Name)
		default:
			if j, dup := names[p.Name]; dup {
				add(pp+".name", "%q is already used by pools[%d]; pool names must be unique even across resource prefixes", p.Name, j)
			} else {
				names[p.Name] = i
			}
		}
		if len(p.ResourcePrefix) > 253 || !subdomainRE.MatchString(p.ResourcePrefix) || !strings.Contains(p.ResourcePrefix, ".") {
			add(pp+".resourcePrefix", "must be a DNS domain such as %q, got %q", DefaultResourcePrefix, p.ResourcePrefix)
		} else if p.ResourcePrefix == "kubernetes.io" || strings.HasSuffix(p.ResourcePrefix, ".kubernetes.io") {
			add(pp+".resourcePrefix", "%q is reserved by Kubernetes; use your own domain such as %q", p.ResourcePrefix, DefaultResourcePrefix)
		}
		switch p.Backend {
		case Software, Hardware:
		case "":
			add(pp+".backend", "is required; set %q or %q", Software, Hardware)
		default:
			add(pp+".backend", "must be %q or %q, got %q", Software, Hardware, p.Backend)
		}
		if p.VIsPerPort < 1 || p.VIsPerPort > MaxVIsPerPort {
			add(pp+".visPerPort", "must be 1..%d, got %d; set it or remove the pool", MaxVIsPerPort, p.VIsPerPort)
		}
		switch p.Policy {
		case Spread, Pack:
		default:
			add(pp+".policy", "must be %q or %q, got %q", Spread, Pack, p.Policy)
		}
		s := p.Selector
		if p.Backend == Software && len(s.Interfaces)+len(s.Drivers)+len(s.PCIAddresses)+len(s.MACs) == 0 {
			add(pp+".selector", "a software pool needs at least one of interfaces, drivers, pciAddresses, macs; name the ports it may use")
		}
		for j, n := range s.Interfaces {
			fp := fmt.Sprintf("%s.selector.interfaces[%d]", pp, j)
			if n == "" || len(n) > 15 || strings.ContainsAny(n, "/: \t\n") || n == "." || n == ".." {
				add(fp, "must be an interface name (1..15 characters, no '/', ':' or spaces), got %q", n)
				continue
			}
			if k, dup := ifaceOwner[n]; dup && k != i {
				add(fp, "interface %q is already selected by pools[%d]; a port belongs to one pool", n, k)
			} else {
				ifaceOwner[n] = i
			}
		}
		for j, d := range s.Drivers {
			if !driverRE.MatchString(d) {
				add(fmt.Sprintf("%s.selector.drivers[%d]", pp, j), "must be a kernel driver name such as \"sfc\", got %q", d)
			}
		}
		for j, a := range s.PCIAddresses {
			if !pciRE.MatchString(a) {
				add(fmt.Sprintf("%s.selector.pciAddresses[%d]", pp, j), "must be a lower-case PCI address domain:bus:device.function such as \"0000:3b:00.0\", got %q", a)
			}
		}
		for j, m := range s.MACs {
			hw, err := net.ParseMAC(m)
			if err != nil || len(hw) != 6 {
				add(fmt.Sprintf("%s.selector.macs[%d]", pp, j), "must be an Ethernet MAC such as \"00:0f:53:01:02:03\", got %q", m)
			}
		}
		p.Limits.validate(pp, add)
		nss := make([]string, 0, len(p.FilterPolicy.Namespaces))
		for ns := range p.FilterPolicy.Namespaces {
			nss = append(nss, ns)
		}
		sort.Strings(nss)
		for _, ns := range nss {
			if len(ns) > 63 || !labelRE.MatchString(ns) {
				add(fmt.Sprintf("%s.filterPolicy.namespaces[%q]", pp, ns), "must be a namespace name (a DNS label)")
			}
		}
	}
	return errors.Join(errs...)
}

func (l *Limits) setDefaults() {
	if l.PinnedMemory == "" {
		l.PinnedMemory = DefaultPinnedMemory
	}
	if l.VIs == 0 {
		l.VIs = DefaultLimitVIs
	}
	if l.Filters == 0 {
		l.Filters = DefaultLimitFilters
	}
	if l.Connections == 0 {
		l.Connections = DefaultLimitConnections
	}
}

// validate adds a problem per bad limit of pool path pp.
func (l Limits) validate(pp string, add func(path, format string, args ...any)) {
	if q, err := resource.ParseQuantity(l.PinnedMemory); err != nil || q.Value() < 1<<20 || q.Value() > 1<<40 {
		add(pp+".limits.pinnedMemory", "must be a quantity of 1Mi..1Ti such as \"1Gi\", got %q", l.PinnedMemory)
	}
	if l.VIs < 1 || l.VIs > MaxVIsPerPort {
		add(pp+".limits.vis", "must be 1..%d, got %d", MaxVIsPerPort, l.VIs)
	}
	if l.Filters < 1 || l.Filters > MaxLimitFilters {
		add(pp+".limits.filters", "must be 1..%d, got %d", MaxLimitFilters, l.Filters)
	}
	if l.Connections < 1 || l.Connections > 64 {
		add(pp+".limits.connections", "must be 1..64, got %d", l.Connections)
	}
}

// PoolByName returns the pool called name.
func (c *Config) PoolByName(name string) (Pool, bool) {
	for _, p := range c.Pools {
		if p.Name == name {
			return p, true
		}
	}
	return Pool{}, false
}
