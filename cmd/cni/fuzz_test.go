package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kube-efvi/kube-efvi/pkg/cniapi"
)

func TestParseNetConf(t *testing.T) {
	c, err := parseNetConf([]byte(`{"cniVersion":"1.1.0","name":"n","type":"efvi-cni","defaultFilters":"udp:5000 tcp:[fd00::1]:80"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentSocket != cniapi.DefaultSocket || c.timeout != defaultTimeout {
		t.Fatalf("defaults: %+v", c)
	}
	for _, tc := range []struct{ in, want string }{
		{`[]`, "not a JSON object"},
		{`{"name":"n"}`, `"cniVersion" is missing`},
		{`{"cniVersion":"1.1.0","agentSocket":"/run/../x"}`, `"agentSocket"`},
		{`{"cniVersion":"1.1.0","timeout":"0s"}`, `"timeout"`},
		{`{"cniVersion":"1.1.0","timeout":"1h"}`, `"timeout"`},
		{`{"cniVersion":"1.1.0","defaultFilters":"sniff:maybe"}`, `"defaultFilters"`},
		{`{"cniVersion":"1.1.0","defaultFilters":7}`, `must be a string`},
		{`{"cniVersion":"1.1.0","extra":1}`, `"extra" is unknown`},
		{`{"cniVersion":"1.1.0","timeout":"500us"}`, `"timeout"`},
		{`{"cniVersion":"1.1.0","kubeletCheckpoint":"x"}`, `"kubeletCheckpoint"`},
		{`{"cniVersion":"1.1.0","prevResult":[1]}`, `"prevResult"`},
	} {
		c, err := parseNetConf([]byte(tc.in))
		if err == nil {
			err = c.strict()
		}
		if err == nil || !strings.Contains(err.Msg, tc.want) {
			t.Errorf("%s: %v, want %q", tc.in, err, tc.want)
		}
		// Lenient: whatever was wrong, the defaults stand in.
		if c == nil || c.AgentSocket != cniapi.DefaultSocket || c.timeout != defaultTimeout {
			t.Errorf("%s: lenient netconf %+v", tc.in, c)
		}
	}
	// A good timeout and socket are taken.
	c, err = parseNetConf([]byte(`{"cniVersion":"1.1.0","timeout":"1ms","agentSocket":"/x.sock","bogus":1}`))
	if err != nil || c.timeout != time.Millisecond || c.AgentSocket != "/x.sock" || c.strict() == nil {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestK8sArgs(t *testing.T) {
	ns, name, uid, err := k8sArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u")
	if err != nil || ns != "a" || name != "b" || uid != "u" {
		t.Fatalf("%q %q %q %v", ns, name, uid, err)
	}
	if ns, name, uid, err := k8sArgs(""); err != nil || ns+name+uid != "" {
		t.Fatalf("empty CNI_ARGS: %q %q %q %v", ns, name, uid, err)
	}
	if _, _, _, err := k8sArgs("K8S_POD_NAME"); err == nil {
		t.Fatal("malformed CNI_ARGS accepted")
	}
}

// FuzzNetConf: any stdin gives a netconf or a CNI error, never a panic, and
// an accepted netconf is sane.
func FuzzNetConf(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"efvi-cni","agentSocket":"/run/efvi/agent.sock","defaultFilters":"udp:5000","timeout":"5s"}`,
		`{"cniVersion":"1.0.0","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/24"}]}}`,
		`{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","defaultFilters":"udp:[fd00::1]:80;tcp:vid=5,8080 sniff"}`,
		`{"cniVersion":1}`, `null`, `{"timeout":"-1s"}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseNetConf(data)
		if c == nil {
			t.Fatal("no netconf (the lenient parse must always give the defaults)")
		}
		for _, e := range append(c.problems, err) {
			if e != nil && (e.Msg == "" || e.Code == 0) {
				t.Fatalf("error without code or message: %+v", e)
			}
		}
		// Lenient or not, what DEL and STATUS would use is sane.
		if c.timeout < minTimeout || c.timeout > maxTimeout || !strings.HasPrefix(c.AgentSocket, "/") || !strings.HasPrefix(c.KubeletCheckpoint, "/") {
			t.Fatalf("insane netconf: %+v", c)
		}
		if err == nil && c.strict() == nil && c.CNIVersion == "" {
			t.Fatalf("strictly accepted a netconf without cniVersion: %+v", c)
		}
		_, _, _ = prevIPs(c)
	})
}

// FuzzAnnotation: the agent's declaration parser on any annotation gives
// valid specs or an error naming the source, for IPv4, IPv6 and dual-stack
// pods.
func FuzzAnnotation(f *testing.F) {
	for _, s := range []string{
		"udp:5000", "udp:5000;tcp:8080", "udp:239.1.2.3:5000 udp:mcastloop-rx,239.1.2.4:5001",
		"tcp:vid=5,[fd00::1]:80,[fd00::2]:4000", "eth:vid=7,02:00:00:00:00:01", "sniff", "block-kernel",
		"udp:;;", "udp:notaport", "  ", "udp:10.0.0.1:5000,10.0.0.2:6000",
	} {
		f.Add(s, uint8(3))
	}
	v4, v6 := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::3")
	f.Fuzz(func(t *testing.T, text string, which uint8) {
		var ips []netip.Addr
		if which&1 != 0 {
			ips = append(ips, v4)
		}
		if which&2 != 0 {
			ips = append(ips, v6)
		}
		specs, err := cniapi.ParseDeclaration("annotation efvi.io/filters", text, ips)
		if err != nil {
			if !strings.Contains(err.Error(), "annotation efvi.io/filters") {
				t.Fatalf("error does not name its source: %v", err)
			}
			return
		}
		if len(specs) > cniapi.MaxFilters {
			t.Fatalf("%d specs", len(specs))
		}
		for i, s := range specs {
			if s.Class() == 0 {
				t.Fatalf("spec %d of %q is invalid: %+v", i, text, s)
			}
			for _, o := range specs[:i] {
				if o == s {
					t.Fatalf("duplicate spec %v", s)
				}
			}
		}
	})
}
