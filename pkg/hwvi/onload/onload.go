//go:build onload && cgo

// Package onload is the hardware backend's NIC operations over Onload's
// libciul (the ef_vi library), written against its real headers
// (etherfabric/pd.h, vi.h, ef_vi.h). It builds only with the build tag
// onload and an Onload installation given to cgo, e.g.
//
//	CGO_CFLAGS=-I$ONLOAD_PREFIX/include CGO_LDFLAGS="-L$ONLOAD_PREFIX/lib -Wl,-rpath,$ONLOAD_PREFIX/lib" go build -tags onload
//
// (make build-onload ONLOAD_PREFIX=... does this). Use the node's own Onload
// release: libciul embeds its driver interface version and sfc_char refuses
// another with -ELIBACC.
package onload

/*
#cgo LDFLAGS: -lciul
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <netinet/in.h>
#include <etherfabric/base.h>
#include <etherfabric/pd.h>
#include <etherfabric/vi.h>
#include <etherfabric/ef_vi.h>

// One allocation's handle, PD and VI set, in C memory: the VI set keeps a
// pointer to the PD, so neither may live in (movable) Go memory.
typedef struct {
	ef_driver_handle dh;
	ef_pd pd;
	ef_vi_set set;
	int have_pd, have_set;
} kefvi_alloc;

static int kefvi_open(int ifindex, int n_vis, kefvi_alloc** out) {
	kefvi_alloc* a = calloc(1, sizeof(*a));
	int rc;
	if (a == NULL)
		return -ENOMEM;
	a->dh = -1;
	if ((rc = ef_driver_open(&a->dh)) < 0) {
		free(a);
		return rc;
	}
	if ((rc = ef_pd_alloc(&a->pd, a->dh, ifindex, EF_PD_DEFAULT)) < 0)
		goto fail;
	a->have_pd = 1;
	if ((rc = ef_vi_set_alloc_from_pd(&a->set, a->dh, &a->pd, a->dh, n_vis)) < 0)
		goto fail;
	a->have_set = 1;
	*out = a;
	return 0;
fail:
	if (a->have_pd)
		ef_pd_free(&a->pd, a->dh);
	ef_driver_close(a->dh);
	free(a);
	return rc;
}

static int kefvi_close(kefvi_alloc* a) {
	int rc = 0, r;
	if (a->have_set && (r = ef_vi_set_free(&a->set, a->dh)) < 0)
		rc = r;
	if (a->have_pd && (r = ef_pd_free(&a->pd, a->dh)) < 0 && rc == 0)
		rc = r;
	if ((r = ef_driver_close(a->dh)) < 0 && rc == 0)
		rc = r;
	free(a);
	return rc;
}

static int kefvi_filter_add(kefvi_alloc* a, int proto, unsigned host_be32, int port_be16, int* id, int* type) {
	ef_filter_spec fs;
	ef_filter_cookie c;
	int rc;
	ef_filter_spec_init(&fs, EF_FILTER_FLAG_NONE);
	if ((rc = ef_filter_spec_set_ip4_local(&fs, proto, host_be32, port_be16)) < 0)
		return rc;
	if ((rc = ef_vi_set_filter_add(&a->set, a->dh, &fs, &c)) < 0)
		return rc;
	*id = c.filter_id;
	*type = c.filter_type;
	return 0;
}

static int kefvi_filter_del(kefvi_alloc* a, int id, int type) {
	ef_filter_cookie c;
	c.filter_id = id;
	c.filter_type = type;
	return ef_vi_set_filter_del(&a->set, a->dh, &c);
}

static int kefvi_fd(kefvi_alloc* a) { return a->dh; }
static unsigned kefvi_pd_res(kefvi_alloc* a) { return a->pd.pd_resource_id; }
static unsigned kefvi_set_res(kefvi_alloc* a) { return a->set.vis_res_id; }
static int kefvi_udp(void) { return IPPROTO_UDP; }
static int kefvi_tcp(void) { return IPPROTO_TCP; }
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"sync"
	"syscall"

	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
)

// NIC implements hwvi.NIC over libciul.
type NIC struct{}

var _ hwvi.NIC = NIC{}

// Version implements hwvi.NIC: ef_vi_version_str and
// ef_vi_driver_interface_str of the linked libciul.
func (NIC) Version() (string, string) {
	return C.GoString(C.ef_vi_version_str()), C.GoString(C.ef_vi_driver_interface_str())
}

// errno turns libciul's negative return into an error.
func errno(op string, rc C.int) error {
	return fmt.Errorf("%s: %w", op, syscall.Errno(-rc))
}

// Open implements hwvi.NIC: ef_driver_open, ef_pd_alloc on ifindex (in the
// caller's — the agent's host — network namespace), ef_vi_set_alloc_from_pd.
func (NIC) Open(ifname string, ifindex, vis int) (hwvi.VISet, error) {
	if vis < 1 {
		return nil, fmt.Errorf("VI set of %d VIs: want at least 1", vis)
	}
	var a *C.kefvi_alloc
	if rc := C.kefvi_open(C.int(ifindex), C.int(vis), &a); rc < 0 {
		return nil, errno(fmt.Sprintf("ef_driver_open/ef_pd_alloc(%s, ifindex %d)/ef_vi_set_alloc_from_pd(%d VIs)", ifname, ifindex, vis), rc)
	}
	return &viSet{a: a}, nil
}

type viSet struct {
	mu sync.Mutex
	a  *C.kefvi_alloc // nil once closed
}

func (s *viSet) FD() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return -1
	}
	return int(C.kefvi_fd(s.a))
}

func (s *viSet) PDResID() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return 0
	}
	return uint32(C.kefvi_pd_res(s.a))
}

func (s *viSet) VISetResID() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return 0
	}
	return uint32(C.kefvi_set_res(s.a))
}

// AddFilter implements hwvi.VISet: ef_filter_spec_set_ip4_local +
// ef_vi_set_filter_add.
func (s *viSet) AddFilter(f hwvi.Filter) (hwvi.FilterID, error) {
	var proto C.int
	switch f.Proto {
	case "udp":
		proto = C.kefvi_udp()
	case "tcp":
		proto = C.kefvi_tcp()
	default:
		return hwvi.FilterID{}, fmt.Errorf("filter protocol %q: want udp or tcp", f.Proto)
	}
	ip4 := f.LocalIP.To4()
	if ip4 == nil {
		return hwvi.FilterID{}, fmt.Errorf("filter address %v: want IPv4", f.LocalIP)
	}
	// Big-endian values as the header asks: the bytes in network order,
	// read back in the host's order.
	host := C.uint(binary.NativeEndian.Uint32(ip4))
	var pb [2]byte
	binary.BigEndian.PutUint16(pb[:], f.LocalPort)
	port := C.int(binary.NativeEndian.Uint16(pb[:]))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return hwvi.FilterID{}, fmt.Errorf("VI set closed")
	}
	var id, typ C.int
	if rc := C.kefvi_filter_add(s.a, proto, host, port, &id, &typ); rc < 0 {
		return hwvi.FilterID{}, errno(fmt.Sprintf("ef_vi_set_filter_add(%s %v:%d)", f.Proto, f.LocalIP, f.LocalPort), rc)
	}
	return hwvi.FilterID{Type: int(typ), Index: int(id)}, nil
}

// RemoveFilter implements hwvi.VISet: ef_vi_set_filter_del.
func (s *viSet) RemoveFilter(id hwvi.FilterID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return nil
	}
	if rc := C.kefvi_filter_del(s.a, C.int(id.Index), C.int(id.Type)); rc < 0 {
		return errno("ef_vi_set_filter_del", rc)
	}
	return nil
}

// Close implements hwvi.VISet: ef_vi_set_free, ef_pd_free, ef_driver_close.
func (s *viSet) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.a == nil {
		return nil
	}
	rc := C.kefvi_close(s.a)
	s.a = nil
	if rc < 0 {
		return errno("free VI set / PD / driver handle", rc)
	}
	return nil
}
