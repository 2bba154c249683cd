package filter

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

// roundTrip is input -> canonical form.
var roundTrip = [][2]string{
	{"udp:10.0.0.1:5000", ""},
	{"tcp:10.0.0.1:80", ""},
	{"udp:10.0.0.1:05000", "udp:10.0.0.1:5000"},
	{"udp:10.0.0.1:65535", ""},
	{"udp:10.0.0.1:5000,10.0.0.2:6000", ""},
	{"udp:10.0.0.1:5000,0.0.0.0:0", "udp:10.0.0.1:5000"},
	{"udp:10.0.0.1:5000,0.0.0.0:77", "udp:10.0.0.1:5000"},
	{"udp:mcastloop-rx,239.1.2.3:5000", ""},
	{"udp:vid=5,239.1.2.3:5000", ""},
	{"udp:vid=5,mcastloop-rx,239.1.2.3:5000", "udp:mcastloop-rx,vid=5,239.1.2.3:5000"},
	{"udp:mcastloop-rx,vid=0,239.1.2.3:5000", ""},
	{"udp:shared-rxq,exclusive-rxq,10.0.0.1:1", "ERR"},
	{"udp:exclusive-rxq,10.0.0.1:1", ""},
	{"tcp:shared-rxq,vid=4095,10.0.0.1:1,10.9.9.9:2", ""},
	{"udp:[fd00::1]:5000", ""},
	{"udp:[FD00:0::1]:5000", "udp:[fd00::1]:5000"},
	{"tcp:[fd00::1]:80,[fd00::2]:4000", ""},
	{"udp:[fd00::1]:80,[::]:0", "udp:[fd00::1]:80"},
	{"udp:vid=7,[ff15::1]:5000", ""},
	{"eth:02:00:00:00:00:01", ""},
	{"eth:02-00-00-00-00-0A", "eth:02:00:00:00:00:0a"},
	{"eth:vid=7,02:00:00:00:00:01", ""},
	{"eth:ff:ff:ff:ff:ff:ff", ""},
	{"eth:01:00:5e:00:00:01,ipproto=udp", ""},
	{"eth:01:00:5e:00:00:01,ipproto=2", ""},
	{"eth:vid=1,02:00:00:00:00:01,ethertype=35063", "eth:vid=1,02:00:00:00:00:01,ethertype=0x88f7"},
	{"eth:exclusive-rxq,02:00:00:00:00:01,ethertype=0X88F7", "eth:exclusive-rxq,02:00:00:00:00:01,ethertype=0x88f7"},
	{"ethertype:0x88f7", ""},
	{"ethertype:0x0806", ""},
	{"ethertype:2054", "ethertype:0x0806"},
	{"ethertype:vid=3,0x88cc", ""},
	{"ipproto:17", "ipproto:udp"},
	{"ipproto:udp", ""},
	{"ipproto:tcp", ""},
	{"ipproto:icmp", ""},
	{"ipproto:icmpv6", ""},
	{"ipproto:0", ""},
	{"ipproto:vid=12,132", ""},
	{"unicast-all", ""},
	{"multicast-all", ""},
	{"unicast-mis", ""},
	{"multicast-mis", ""},
	{"unicast-mis:vid=9", ""},
	{"multicast-mis:mcastloop-rx,vid=9", ""},
	{"unicast-all:shared-rxq", ""},
	{"sniff", "sniff:promisc"},
	{"sniff:promisc", ""},
	{"sniff:no-promisc", ""},
	{"sniff:exclusive-rxq,no-promisc", ""},
	{"block-kernel", ""},
	{"block-kernel-unicast", ""},
	{"block-kernel-multicast", ""},
	{"block-kernel:mcastloop-rx", ""},
}

func TestParseRoundTrip(t *testing.T) {
	for _, tc := range roundTrip {
		in, want := tc[0], tc[1]
		if want == "" {
			want = in
		}
		s, err := Parse(in)
		if want == "ERR" {
			if err == nil {
				t.Errorf("Parse(%q) = %v, want error", in, s)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if got := s.String(); got != want {
			t.Errorf("Parse(%q).String() = %q, want %q", in, got, want)
		}
		again, err := Parse(s.String())
		if err != nil || again != s {
			t.Errorf("re-parse of %q: %+v, %v; want %+v", s.String(), again, err, s)
		}
		text, err := s.MarshalText()
		if err != nil || string(text) != want {
			t.Errorf("MarshalText: %q %v", text, err)
		}
		var u Spec
		if err := u.UnmarshalText(text); err != nil || u != s {
			t.Errorf("UnmarshalText(%q) = %+v %v", text, u, err)
		}
	}
}

// TestSetterSpecsRoundTrip: every valid spec built by setter combinations
// prints and parses back to itself (tx-sniff aside: the grammar refuses it).
func TestSetterSpecsRoundTrip(t *testing.T) {
	singles := []string{"ip4local", "ip4full", "ip6local", "ip6full", "mac", "macvlan", "ethertype", "ipproto",
		"uall", "mall", "umis", "mmis", "sniff", "block", "blocku", "blockm", "vlan"}
	n := 0
	for _, flags := range []Flags{0, FlagMcastLoopReceive, FlagExclusiveRxq, FlagSharedRxq | FlagMcastLoopReceive} {
		for _, a := range singles {
			for _, b := range append([]string{""}, singles...) {
				s := Spec{Flags: flags}
				if stepNames[a](&s) != nil {
					continue
				}
				if b != "" && stepNames[b](&s) != nil {
					continue
				}
				if s.Validate() != nil {
					continue
				}
				n++
				p, err := Parse(s.String())
				if err != nil || p != s {
					t.Errorf("%s+%s: Parse(%q) = %+v, %v; want %+v", a, b, s.String(), p, err, s)
				}
			}
		}
	}
	if n < 60 {
		t.Fatalf("only %d valid combinations exercised", n)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in      string
		errno   syscall.Errno
		mention string // the message must name this
	}{
		{"", syscall.EINVAL, "empty"},
		{"udp", syscall.EINVAL, "host:port"},
		{"udp:", syscall.EINVAL, "nothing after"},
		{"UDP:10.0.0.1:5", syscall.EINVAL, `unknown filter kind "UDP"`},
		{"sctp:10.0.0.1:5", syscall.EINVAL, "sctp"},
		{"udp:5000", syscall.EINVAL, "host missing"},
		{"udp:10.0.0.1", syscall.EINVAL, `"10.0.0.1"`},
		{"udp:10.0.0.1:0", syscall.EINVAL, "port 0"},
		{"udp:10.0.0.1:65536", syscall.EINVAL, "65536"},
		{"udp:0.0.0.0:5", syscall.EINVAL, "unspecified"},
		{"udp:010.0.0.1:5", syscall.EINVAL, "010.0.0.1"},
		{"udp:fd00::1:5", syscall.EINVAL, "[fd00::1]:5000"},
		{"udp:[fe80::1%eth0]:5", syscall.EINVAL, "zone"},
		{"udp:[::ffff:10.0.0.1]:5", syscall.EINVAL, "IPv4-mapped"},
		{"udp:10.0.0.1:5,[fd00::1]:5", syscall.EINVAL, "families"},
		{"udp:10.0.0.1:5,10.0.0.2:0", syscall.EINVAL, "remote port 0"},
		{"udp:10.0.0.1:5,239.0.0.1:9", syscall.EINVAL, "multicast"},
		{"udp:10.0.0.1:5,10.0.0.2:6,10.0.0.3:7", syscall.EINVAL, "3 arguments"},
		{"udp:10.0.0.1:5,", syscall.EINVAL, "empty token"},
		{"udp:,10.0.0.1:5", syscall.EINVAL, "empty token"},
		{"udp:vid=5,vid=6,10.0.0.1:5", syscall.EINVAL, "twice"},
		{"udp:vid=4096,10.0.0.1:5", syscall.EINVAL, "vid=4096"},
		{"udp:vid=-1,10.0.0.1:5", syscall.EINVAL, "vid=-1"},
		{"udp:vid=+1,10.0.0.1:5", syscall.EINVAL, "vid=+1"},
		{"udp:vid=,10.0.0.1:5", syscall.EINVAL, "vid="},
		{"udp:mcastloop-rx,mcastloop-rx,10.0.0.1:5", syscall.EINVAL, "twice"},
		{"udp:10.0.0.1:5,mcastloop-rx", syscall.EINVAL, "mcastloop-rx"},
		{"udp:exclusive-rxq,shared-rxq,10.0.0.1:5", syscall.EINVAL, "EXCLUSIVE_RXQ"},
		{"eth:", syscall.EINVAL, "nothing after"},
		{"eth:02:00:00:00:00", syscall.EINVAL, "bad MAC"},
		{"eth:02:00:00:00:00:0g", syscall.EINVAL, "bad MAC"},
		{"eth:02:00-00:00:00:01", syscall.EINVAL, "bad MAC"},
		{"eth:02:00:00:00:00:01,ipproto=300", syscall.EINVAL, "300"},
		{"eth:02:00:00:00:00:01,ethertype=0x8100", syscall.EINVAL, "VLAN tag"},
		{"eth:02:00:00:00:00:01,foo=1", syscall.EINVAL, "foo=1"},
		{"eth:02:00:00:00:00:01,ipproto=1,ethertype=0x88f7", syscall.EINVAL, "3 arguments"},
		{"ethertype:", syscall.EINVAL, "nothing after"},
		{"ethertype:0x", syscall.EINVAL, `"0x"`},
		{"ethertype:0x10000", syscall.EINVAL, "0x10000"},
		{"ethertype:0x0100", syscall.EINVAL, "802.3"},
		{"ethertype:0x88f7,1", syscall.EINVAL, "2 arguments"},
		{"ipproto:256", syscall.EINVAL, "256"},
		{"ipproto:sctp", syscall.EINVAL, "sctp"},
		{"ipproto:-1", syscall.EINVAL, "-1"},
		{"unicast-all:vid=5", syscall.EINVAL, "not a valid filter"},
		{"multicast-all:vid=5", syscall.EINVAL, "not a valid filter"},
		{"unicast-all:x", syscall.EINVAL, `"x"`},
		{"sniff:vid=5", syscall.EPROTONOSUPPORT, "sniff"},
		{"tx-sniff", syscall.EOPNOTSUPP, "tx-sniff (copies of the port's TX traffic) is not supported"},
		{"tx-sniff:vid=5", syscall.EOPNOTSUPP, "tx-sniff"},
		{"block-kernel:vid=1", syscall.EPROTONOSUPPORT, "block-kernel"},
		{"sniff:maybe", syscall.EINVAL, "maybe"},
		{"sniff:promisc,no-promisc", syscall.EINVAL, "promisc,no-promisc"},
		{"tx-sniff:promisc", syscall.EOPNOTSUPP, "use sniff"},
		{"block-kernel-broadcast", syscall.EINVAL, "block-kernel-broadcast"},
		{" udp:10.0.0.1:5", syscall.EINVAL, "unknown filter kind"},
	}
	for _, tc := range tests {
		s, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) = %v, want error", tc.in, s)
			continue
		}
		var fe *Error
		if !errors.As(err, &fe) || fe.Errno != tc.errno || fe.Spec != tc.in {
			t.Errorf("Parse(%q): %v; want errno %v and spec text = input", tc.in, err, tc.errno)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Parse(%q): message %q does not mention %q", tc.in, err, tc.mention)
		}
		if s != (Spec{}) {
			t.Errorf("Parse(%q) returned a spec with its error", tc.in)
		}
	}
}

func TestParseWithDefaultHost(t *testing.T) {
	pod4, pod6 := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::42")
	tests := []struct {
		in   string
		host netip.Addr
		want string
	}{
		{"udp:5000", pod4, "udp:10.1.2.3:5000"},
		{"tcp:vid=5,80", pod4, "tcp:vid=5,10.1.2.3:80"},
		{"udp:mcastloop-rx,5000", pod6, "udp:mcastloop-rx,[fd00::42]:5000"},
		{"udp:5000,10.9.9.9:1", pod4, "udp:10.1.2.3:5000,10.9.9.9:1"},
		{"udp:239.1.2.3:5000", pod4, "udp:239.1.2.3:5000"},
		{"eth:02:00:00:00:00:01", pod4, "eth:02:00:00:00:00:01"},
		{"udp:5000,[fd00::9]:1", pod4, "ERR"},
		{"udp:0", pod4, "ERR"},
		{"udp:7", netip.AddrFrom16(pod4.As16()), "udp:10.1.2.3:7"},
		{"udp:5000", netip.Addr{}, "ERR"},
		{"udp:5000", netip.MustParseAddr("fe80::1%eth0"), "ERR"},
	}
	for _, tc := range tests {
		s, err := ParseWithDefaultHost(tc.in, tc.host)
		if tc.want == "ERR" {
			if err == nil || !errors.Is(err, syscall.EINVAL) {
				t.Errorf("ParseWithDefaultHost(%q, %v) = %v, %v; want EINVAL", tc.in, tc.host, s, err)
			}
			continue
		}
		if err != nil || s.String() != tc.want {
			t.Errorf("ParseWithDefaultHost(%q, %v) = %q, %v; want %q", tc.in, tc.host, s, err, tc.want)
		}
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList(" udp:10.0.0.1:5000;tcp:10.0.0.1:80 \n\t sniff;;  ")
	if err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, s := range got {
		texts = append(texts, s.String())
	}
	if strings.Join(texts, " ") != "udp:10.0.0.1:5000 tcp:10.0.0.1:80 sniff:promisc" {
		t.Fatalf("got %v", texts)
	}
	if l, err := ParseList(" ; \n"); err != nil || l != nil {
		t.Fatalf("empty list: %v %v", l, err)
	}
	_, err = ParseList("udp:10.0.0.1:5000 udp:bogus unicast-all")
	if err == nil || !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), `item 2 of 3 ("udp:bogus")`) {
		t.Fatalf("got %v", err)
	}
	var fe *Error
	if !errors.As(err, &fe) || fe.Spec != "udp:bogus" {
		t.Fatalf("errors.As: %v", err)
	}
	l, err := ParseListWithDefaultHost("udp:5000 udp:239.1.2.3:6000", netip.MustParseAddr("10.1.2.3"))
	if err != nil || len(l) != 2 || l[0].LocalHost != netip.MustParseAddr("10.1.2.3") {
		t.Fatalf("got %v %v", l, err)
	}
	if _, err := ParseListWithDefaultHost("udp:5000", netip.Addr{}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("missing default host: %v", err)
	}
}

func TestStringInvalid(t *testing.T) {
	for _, s := range []Spec{{}, {Match: MatchVLAN, VLAN: 5}, {Match: matchIP, IPProto: 1, LocalHost: ip4a, LocalPort: 1},
		{Match: MatchSniff | MatchTxSniff}} {
		str := s.String()
		if !strings.HasPrefix(str, "invalid{") {
			t.Errorf("String(%+v) = %q, want invalid{...}", s, str)
		}
		if _, err := Parse(str); err == nil {
			t.Errorf("invalid form %q parses", str)
		}
		if _, err := s.MarshalText(); err == nil {
			t.Errorf("MarshalText of invalid spec %q succeeded", str)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, tc := range roundTrip {
		f.Add(tc[0])
	}
	for _, s := range []string{"", ":", "udp::", "udp:[", "eth:vid=1", "sniff:", "udp:5000", "udp:vid=5,5000",
		"udp:[::ffff:1.2.3.4]:1", "ethertype:0x0x1", "ipproto:udp,vid=2", "tx-sniff", "tx-sniff:vid=1"} {
		f.Add(s)
	}
	def := netip.MustParseAddr("10.0.0.9")
	f.Fuzz(func(t *testing.T, in string) {
		check := func(s Spec, err error) {
			if err != nil {
				var fe *Error
				if !errors.As(err, &fe) || fe.Errno == 0 || fe.Reason == "" {
					t.Fatalf("Parse(%q): error %v is not a *Error with errno and reason", in, err)
				}
				return
			}
			if err := s.Validate(); err != nil {
				t.Fatalf("Parse(%q) returned an invalid spec: %v", in, err)
			}
			text := s.String()
			again, err := Parse(text)
			if err != nil {
				t.Fatalf("Parse(%q) ok but its String %q does not parse: %v", in, text, err)
			}
			if again != s {
				t.Fatalf("Parse(%q) = %+v; String %q re-parses to %+v", in, s, text, again)
			}
			if again.String() != text {
				t.Fatalf("String not stable: %q then %q", text, again.String())
			}
		}
		check(Parse(in))
		check(ParseWithDefaultHost(in, def))
	})
}

func FuzzParseList(f *testing.F) {
	f.Add("udp:10.0.0.1:5000;tcp:10.0.0.1:80 sniff")
	f.Add(" ; \n")
	f.Add("udp:5000\teth:02:00:00:00:00:01,ipproto=udp")
	f.Add("unicast-mis:vid=1;;multicast-all")
	f.Fuzz(func(t *testing.T, in string) {
		list, err := ParseList(in)
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), "item ") {
				t.Fatalf("ParseList(%q): %v lacks *Error or item index", in, err)
			}
			return
		}
		var texts []string
		for _, s := range list {
			texts = append(texts, s.String())
		}
		again, err := ParseList(strings.Join(texts, ";"))
		if err != nil || len(again) != len(list) {
			t.Fatalf("re-parse of %q: %v %v", texts, again, err)
		}
		for i := range list {
			if again[i] != list[i] {
				t.Fatalf("item %d: %+v != %+v", i, again[i], list[i])
			}
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, in := range []string{"udp:10.0.0.1:5000", "tcp:vid=5,[fd00::1]:80,[fd00::2]:4000", "eth:02:00:00:00:00:01,ipproto=udp", "sniff"} {
		b.Run(in, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkString(b *testing.B) {
	s, _ := Parse("tcp:vid=5,[fd00::1]:80,[fd00::2]:4000")
	b.ReportAllocs()
	for b.Loop() {
		_ = s.String()
	}
}
