package filter

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

func TestPolicy(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	plain := Policy{OwnIPs: own}
	mcast := Policy{OwnIPs: own, AllowMulticast: true}
	wide := Policy{OwnIPs: own, AllowWide: true}
	both := Policy{OwnIPs: own, AllowMulticast: true, AllowWide: true}
	tests := []struct {
		spec    string
		pol     Policy
		want    syscall.Errno
		mention string
	}{
		{"udp:10.0.0.1:5000", plain, 0, ""},
		{"tcp:10.0.0.1:80,192.168.1.1:4000", plain, 0, ""},
		{"udp:[fd00::1]:5000", plain, 0, ""},
		{"udp:vid=3,10.0.0.1:5000", plain, 0, ""},
		{"udp:10.0.0.2:5000", plain, syscall.EPERM, "10.0.0.2 is not one of the pod's IPs"},
		{"udp:10.0.0.2:5000", both, syscall.EPERM, "not one of the pod's IPs"},
		{"udp:[fd00::2]:5000", plain, syscall.EPERM, "fd00::2"},
		{"udp:239.1.2.3:5000", plain, syscall.EPERM, "multicast allowance"},
		{"udp:239.1.2.3:5000", mcast, 0, ""},
		{"udp:[ff15::1]:5000", mcast, 0, ""},
		{"udp:239.1.2.3:5000", wide, syscall.EPERM, "multicast"},
		{"eth:02:00:00:00:00:01", plain, syscall.EPERM, "wide"},
		{"eth:02:00:00:00:00:01", wide, 0, ""},
		{"eth:01:00:5e:00:00:01", wide, syscall.EPERM, "multicast"},
		{"eth:01:00:5e:00:00:01", mcast, syscall.EPERM, "wide"},
		{"eth:01:00:5e:00:00:01", both, 0, ""},
		{"multicast-all", wide, syscall.EPERM, "multicast"},
		{"multicast-all", both, 0, ""},
		{"unicast-all", plain, syscall.EPERM, "wide"},
		{"unicast-mis", mcast, syscall.EPERM, "wide"},
		{"sniff", plain, syscall.EPERM, "wide"},
		{"sniff", wide, 0, ""},
		{"tx-sniff", plain, syscall.EPERM, "wide"},
		{"block-kernel", plain, syscall.EPERM, "wide"},
		{"block-kernel-multicast", wide, 0, ""},
		{"ethertype:0x88f7", plain, syscall.EPERM, "wide"},
		{"ipproto:icmp", plain, syscall.EPERM, "wide"},
		{"ipproto:icmp", wide, 0, ""},
	}
	for _, tc := range tests {
		err := tc.pol.Check(mustParse(t, tc.spec))
		if errnoOf(err) != tc.want {
			t.Errorf("%+v.Check(%s) = %v, want %v", tc.pol, tc.spec, err, tc.want)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Check(%s): %q does not mention %q", tc.spec, err, tc.mention)
		}
	}
	if err := (Policy{}).Check(Spec{}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("invalid spec: %v", err)
	}
	if err := (Policy{}).Check(mustParse(t, "udp:10.0.0.1:1")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("no own IPs: %v", err)
	}
	zoned := Policy{OwnIPs: []netip.Addr{netip.MustParseAddr("fd00::1%eth0"), netip.MustParseAddr("::ffff:10.0.0.1")}}
	for _, s := range []string{"udp:[fd00::1]:1", "udp:10.0.0.1:1"} {
		if err := zoned.Check(mustParse(t, s)); err != nil {
			t.Errorf("own IP with zone/mapping: %s: %v", s, err)
		}
	}
}
