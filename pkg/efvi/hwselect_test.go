package efvi

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestHardwareSDKSelectBackend(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		kind    BackendKind
		wantErr string
	}{
		{"software", map[string]string{EnvSocket: "/run/a/broker.sock"}, BackendSoftware, ""},
		{"hardware", map[string]string{EnvClusterSocket: "/run/a/cluster.sock", EnvClusterName: "efvi-a1"}, BackendHardware, ""},
		{"hardware with channel", map[string]string{EnvClusterSocket: "/c.sock", EnvClusterName: "0@efvi-a1"}, BackendHardware, ""},
		{"hardware wins over broker", map[string]string{EnvSocket: "/b.sock", EnvClusterSocket: "/c.sock", EnvClusterName: "x"}, BackendHardware, ""},
		{"nothing", map[string]string{}, 0, "neither $EFVI_SOCKET"},
		{"socket without name", map[string]string{EnvClusterSocket: "/c.sock"}, 0, "$EFVI_CLUSTER is not"},
		{"name without socket", map[string]string{EnvClusterName: "x"}, 0, "$EF_VI_CLUSTER_SOCKET is not"},
		{"bad channel", map[string]string{EnvClusterSocket: "/c.sock", EnvClusterName: "a@x"}, 0, "channel index"},
		{"white space", map[string]string{EnvClusterSocket: "/c.sock", EnvClusterName: "a b"}, 0, "not allowed"},
		{"empty after @", map[string]string{EnvClusterSocket: "/c.sock", EnvClusterName: "3@"}, 0, "empty"},
		{"too long", map[string]string{EnvClusterSocket: "/c.sock", EnvClusterName: strings.Repeat("n", 65)}, 0, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := SelectBackend(envOf(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != tc.kind {
				t.Fatalf("kind = %v, want %v", s.Kind, tc.kind)
			}
			if tc.kind == BackendHardware && (s.ClusterSocket != tc.env[EnvClusterSocket] || s.ClusterName != tc.env[EnvClusterName]) {
				t.Fatalf("selection %+v does not carry the environment", s)
			}
		})
	}
}

func TestHardwareSDKDialAgentNeedsEnvironment(t *testing.T) {
	t.Setenv(EnvSocket, "")
	t.Setenv(EnvClusterSocket, "")
	t.Setenv(EnvClusterName, "")
	_, err := DialAgent(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), EnvClusterSocket) || !strings.Contains(err.Error(), EnvSocket) {
		t.Fatalf("DialAgent without environment: %v; want an error naming both backends' variables", err)
	}
}

func TestHardwareSDKAllocReplyParse(t *testing.T) {
	g, err := parseClusterAllocReply([]byte("3 0 17 42 eth2\n"))
	if err != nil || g.PDResource != 17 || g.VISetResource != 42 || g.Interface != "eth2" {
		t.Fatalf("success reply: %+v %v", g, err)
	}
	_, err = parseClusterAllocReply([]byte("3 1 2 0 0\n"))
	var ce *ClusterError
	if !errors.As(err, &ce) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("failure reply: %v, want a ClusterError with ENOENT", err)
	}
	for _, bad := range []string{"", "3 0 1 2\n", "3 2 1 2 eth0\n", "4 0 1 2 eth0\n", "3 0 -1 2 eth0\n", "3 1 0 0 0\n", "3 0 1 2 abcdefghijklmnopq\n"} {
		if _, err := parseClusterAllocReply([]byte(bad)); err == nil || !errors.Is(err, syscall.EIO) {
			t.Errorf("reply %q: err = %v, want EIO", bad, err)
		}
	}
	if err := parseClusterVersionReply([]byte("1 0\n")); err != nil {
		t.Fatal(err)
	}
	if err := parseClusterVersionReply([]byte("1 1\n")); !errors.Is(err, syscall.EBADRQC) {
		t.Fatalf("mismatch: %v", err)
	}
	if err := parseClusterVersionReply([]byte("1\n")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("garbage: %v", err)
	}
}

func FuzzClusterReply(f *testing.F) {
	for _, s := range []string{"1 0\n", "1 1\n", "3 0 1 2 eth0\n", "3 1 2 0 0\n", "3 0 4294967295 0 x\n", "\x00", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = parseClusterVersionReply(b)
		g, err := parseClusterAllocReply(b)
		if err == nil && (g.Interface == "" || len(g.Interface) >= 16) {
			t.Fatalf("accepted %q with interface %q", b, g.Interface)
		}
	})
}

// TestHardwareSDKMemoryDMA checks NIC-registered memory: Memory.Addr is the
// DMA address ef_memreg_dma_addr would give, and Offset/Index/At map DMA
// addresses back, for pages the IOMMU scattered and pages in runs.
func TestHardwareSDKMemoryDMA(t *testing.T) {
	const pages = 8
	b := make([]byte, pages<<nicPageShift)
	dma := []uint64{0x9000_0000, 0x9000_1000, 0x5000_0000, 0x7000_3000, 0x7000_4000, 0x7000_5000, 0x1000, 0xa000_0000}
	m := &Memory{b: b, bufSize: BufSize, nbufs: len(b) / BufSize}
	m.setDMA(dma)
	if len(m.runs) != 5 {
		t.Fatalf("%d runs, want 5 (two pairs and a triple merged)", len(m.runs))
	}
	for i := 0; i < m.NumBufs(); i++ {
		off := uint64(i * BufSize)
		want := Addr(dma[off>>nicPageShift] | off&0xfff)
		if a := m.Addr(i); a != want {
			t.Fatalf("Addr(%d) = %#x, want %#x", i, a, want)
		}
		if got, ok := m.Offset(m.Addr(i) + 100); !ok || got != off+100 {
			t.Fatalf("Offset(Addr(%d)+100) = %d,%v want %d", i, got, ok, off+100)
		}
		if m.Index(m.Addr(i)+2047) != i {
			t.Fatalf("Index of buffer %d's last byte is wrong", i)
		}
		m.Buf(i)[0] = byte(i)
		if s := m.At(m.Addr(i), 1); len(s) != 1 || s[0] != byte(i) {
			t.Fatalf("At(Addr(%d)) does not see the buffer", i)
		}
	}
	for _, a := range []Addr{0, 0x2000, 0x9000_2000, 0x4fff_ffff, 0xa000_1000} {
		if _, ok := m.Offset(a); ok {
			t.Errorf("Offset(%#x) accepted an address outside the region", a)
		}
		if m.Index(a) != -1 || m.At(a, 1) != nil {
			t.Errorf("Index/At(%#x) accepted an address outside the region", a)
		}
	}
	if m.At(m.Addr(1), 2049) != nil {
		t.Error("At crossed a NIC page")
	}
}
