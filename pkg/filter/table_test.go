package filter

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func mustParse(t testing.TB, text string) Spec {
	t.Helper()
	if text == "tx-sniff" { // in the model, not in the grammar
		return Spec{Match: MatchTxSniff}
	}
	s, err := Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTableConflicts(t *testing.T) {
	type add struct {
		owner VIID
		spec  string
		want  syscall.Errno
	}
	tests := []struct {
		name string
		adds []add
	}{
		{"unicast same VI twice", []add{{1, "udp:10.0.0.1:5000", 0}, {1, "udp:10.0.0.1:5000", syscall.EEXIST}}},
		{"unicast other VI", []add{{1, "udp:10.0.0.1:5000", 0}, {2, "udp:10.0.0.1:5000", syscall.EEXIST}}},
		{"flags do not make it different", []add{{1, "udp:10.0.0.1:5000", 0}, {2, "udp:exclusive-rxq,10.0.0.1:5000", syscall.EEXIST}}},
		{"udp vs tcp", []add{{1, "udp:10.0.0.1:5000", 0}, {2, "tcp:10.0.0.1:5000", 0}}},
		{"different VLAN", []add{{1, "udp:10.0.0.1:5000", 0}, {2, "udp:vid=3,10.0.0.1:5000", 0}}},
		{"local and full overlap", []add{{1, "udp:10.0.0.1:5000", 0}, {2, "udp:10.0.0.1:5000,10.0.0.2:1", 0}, {3, "udp:10.0.0.1:5000,10.0.0.2:1", syscall.EEXIST}}},
		{"multicast replicate", []add{{1, "udp:239.1.2.3:5000", 0}, {2, "udp:239.1.2.3:5000", 0}, {3, "udp:mcastloop-rx,239.1.2.3:5000", 0}, {2, "udp:239.1.2.3:5000", syscall.EEXIST}}},
		{"multicast v6 replicate", []add{{1, "udp:[ff15::1]:5000", 0}, {2, "udp:[ff15::1]:5000", 0}}},
		{"broadcast MAC replicates", []add{{1, "eth:ff:ff:ff:ff:ff:ff", 0}, {2, "eth:ff:ff:ff:ff:ff:ff", 0}}},
		{"unicast MAC", []add{{1, "eth:02:00:00:00:00:01", 0}, {2, "eth:02:00:00:00:00:01", syscall.EEXIST}}},
		{"multicast-all replicates", []add{{1, "multicast-all", 0}, {2, "multicast-all", 0}, {1, "multicast-all", syscall.EEXIST}}},
		{"unicast-all one owner", []add{{1, "unicast-all", 0}, {2, "unicast-all", syscall.EEXIST}}},
		{"unicast-mis one owner per VLAN", []add{{1, "unicast-mis", 0}, {2, "unicast-mis:vid=2", 0}, {3, "unicast-mis", syscall.EEXIST}}},
		{"sniff one owner", []add{{1, "sniff:promisc", 0}, {2, "sniff:no-promisc", syscall.EBUSY}, {2, "sniff:promisc", syscall.EBUSY}, {1, "sniff:no-promisc", syscall.EEXIST}, {2, "tx-sniff", 0}}},
		{"tx-sniff one owner", []add{{1, "tx-sniff", 0}, {2, "tx-sniff", syscall.EBUSY}, {1, "tx-sniff", syscall.EEXIST}, {3, "sniff", 0}}},
		{"block shared", []add{{1, "block-kernel", 0}, {2, "block-kernel", 0}, {2, "block-kernel", syscall.EEXIST}, {2, "block-kernel-unicast", 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewTable()
			seen := map[Cookie]bool{}
			for i, a := range tc.adds {
				c, err := tab.Add(a.owner, mustParse(t, a.spec))
				if errnoOf(err) != a.want {
					t.Fatalf("add %d (VI %d, %s): %v, want %v", i, a.owner, a.spec, err, a.want)
				}
				if err != nil {
					if c != 0 {
						t.Fatalf("failed add returned cookie %d", c)
					}
					if !strings.Contains(err.Error(), "VI ") {
						t.Fatalf("conflict error %q does not name the owner", err)
					}
					continue
				}
				if c == 0 || seen[c] {
					t.Fatalf("bad cookie %d", c)
				}
				seen[c] = true
			}
			if tab.Len() != len(seen) {
				t.Fatalf("table has %d entries, want %d", tab.Len(), len(seen))
			}
		})
	}
}

func TestTableAddInvalid(t *testing.T) {
	var tab Table // zero value works
	if _, err := tab.Add(1, Spec{Match: MatchVLAN, VLAN: 1}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("got %v", err)
	}
	if _, err := tab.Add(1, mustParse(t, "udp:10.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
}

func TestTableReplicateAndRemove(t *testing.T) {
	tab := NewTable()
	grp := mustParse(t, "udp:239.1.2.3:5000")
	c3, _ := tab.Add(3, grp)
	c1, _ := tab.Add(1, grp)
	c2, _ := tab.Add(2, grp)
	u1, err := tab.Add(1, mustParse(t, "udp:10.0.0.1:5000"))
	if err != nil {
		t.Fatal(err)
	}
	if got := tab.Owners(grp); !slices.Equal(got, []VIID{1, 2, 3}) {
		t.Fatalf("Owners = %v", got)
	}
	flagged := grp
	flagged.Flags = FlagMcastLoopReceive
	if got := tab.Owners(flagged); len(got) != 3 {
		t.Fatalf("Owners ignores flags: %v", got)
	}
	if got := tab.Owners(mustParse(t, "udp:239.1.2.4:5000")); got != nil {
		t.Fatalf("Owners of unknown group = %v", got)
	}
	removed := tab.RemoveOwner(1)
	if len(removed) != 2 || removed[0].Cookie != c1 || removed[1].Cookie != u1 || removed[0].Owner != 1 {
		t.Fatalf("RemoveOwner = %+v", removed)
	}
	if got := tab.Owners(grp); !slices.Equal(got, []VIID{2, 3}) {
		t.Fatalf("Owners after RemoveOwner = %v", got)
	}
	if got := tab.RemoveOwner(1); got != nil {
		t.Fatalf("second RemoveOwner = %v", got)
	}
	// Now VI 9 may take the unicast filter VI 1 had.
	if _, err := tab.Add(9, mustParse(t, "udp:10.0.0.1:5000")); err != nil {
		t.Fatal(err)
	}
	// Del: wrong owner, unknown cookie, right owner, twice.
	if err := tab.Del(2, c3); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Del by non-owner: %v", err)
	}
	if err := tab.Del(3, 999); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Del unknown: %v", err)
	}
	if err := tab.Del(3, c3); err != nil {
		t.Fatal(err)
	}
	if err := tab.Del(3, c3); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("double Del: %v", err)
	}
	if _, ok := tab.Lookup(c3); ok {
		t.Fatal("deleted cookie still found")
	}
	if e, ok := tab.Lookup(c2); !ok || e.Owner != 2 || e.Spec != grp {
		t.Fatalf("Lookup = %+v %v", e, ok)
	}
	if got := tab.Owners(grp); !slices.Equal(got, []VIID{2}) {
		t.Fatalf("Owners = %v", got)
	}
}

func TestTableCookiesNeverReused(t *testing.T) {
	tab := NewTable()
	s := mustParse(t, "udp:10.0.0.1:5000")
	seen := map[Cookie]bool{}
	for range 100 {
		c, err := tab.Add(1, s)
		if err != nil {
			t.Fatal(err)
		}
		if seen[c] {
			t.Fatalf("cookie %d reused", c)
		}
		seen[c] = true
		if err := tab.Del(1, c); err != nil {
			t.Fatal(err)
		}
	}
	// Restore with lower cookies does not rewind.
	if err := tab.Restore([]Entry{{Cookie: 5, Owner: 2, Spec: mustParse(t, "sniff")}}); err != nil {
		t.Fatal(err)
	}
	c, err := tab.Add(1, s)
	if err != nil || seen[c] || c == 5 {
		t.Fatalf("cookie after restore: %d %v", c, err)
	}
}

func TestTableListAndSnapshotRestore(t *testing.T) {
	tab := NewTable()
	texts := []string{"udp:10.0.0.1:5000", "udp:239.1.2.3:5000", "sniff:no-promisc", "eth:vid=2,02:00:00:00:00:01,ipproto=udp",
		"block-kernel-multicast", "tcp:[fd00::1]:80,[fd00::2]:1"}
	for i, txt := range texts {
		if _, err := tab.Add(VIID(i%3+1), mustParse(t, txt)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tab.Add(7, mustParse(t, "udp:239.1.2.3:5000")); err != nil {
		t.Fatal(err)
	}
	list := tab.List()
	if len(list) != 7 || !slices.IsSortedFunc(list, func(a, b Entry) int { return int(a.Cookie) - int(b.Cookie) }) {
		t.Fatalf("List = %+v", list)
	}
	data, err := json.Marshal(tab.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"spec":"eth:vid=2,02:00:00:00:00:01,ipproto=udp"`) {
		t.Fatalf("snapshot JSON: %s", data)
	}
	var entries []Entry
	if err := json.Unmarshal(data, &entries); err != nil {
		t.Fatal(err)
	}
	fresh := NewTable()
	if err := fresh.Restore(entries); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(fresh.List(), list) {
		t.Fatalf("restored %+v\nwant %+v", fresh.List(), list)
	}
	if got := fresh.Owners(mustParse(t, "udp:239.1.2.3:5000")); !slices.Equal(got, []VIID{2, 7}) {
		t.Fatalf("restored group owners %v", got)
	}
	// Conflicts are still enforced after restore, and new cookies are fresh.
	if _, err := fresh.Add(9, mustParse(t, "sniff")); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("sniff after restore: %v", err)
	}
	c, err := fresh.Add(9, mustParse(t, "udp:10.0.0.1:5001"))
	if err != nil || c <= list[len(list)-1].Cookie {
		t.Fatalf("new cookie %d after restore: %v", c, err)
	}
}

func TestTableRestoreRejects(t *testing.T) {
	u := mustParse(t, "udp:10.0.0.1:5000")
	tests := []struct {
		name    string
		entries []Entry
		want    syscall.Errno
	}{
		{"cookie 0", []Entry{{Cookie: 0, Owner: 1, Spec: u}}, syscall.EINVAL},
		{"duplicate cookie", []Entry{{Cookie: 1, Owner: 1, Spec: u}, {Cookie: 1, Owner: 2, Spec: mustParse(t, "tx-sniff")}}, syscall.EEXIST},
		{"conflict", []Entry{{Cookie: 1, Owner: 1, Spec: u}, {Cookie: 2, Owner: 2, Spec: u}}, syscall.EEXIST},
		{"two sniffers", []Entry{{Cookie: 1, Owner: 1, Spec: mustParse(t, "sniff")}, {Cookie: 2, Owner: 2, Spec: mustParse(t, "sniff")}}, syscall.EBUSY},
		{"invalid spec", []Entry{{Cookie: 1, Owner: 1, Spec: Spec{Match: MatchVLAN}}}, syscall.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewTable()
			keep, _ := tab.Add(5, mustParse(t, "multicast-all"))
			err := tab.Restore(tc.entries)
			if errnoOf(err) != tc.want || !strings.Contains(err.Error(), "restore filter") {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if l := tab.List(); len(l) != 1 || l[0].Cookie != keep {
				t.Fatalf("failed restore changed the table: %+v", l)
			}
		})
	}
	var bad []Entry
	if err := json.Unmarshal([]byte(`[{"cookie":1,"owner":1,"spec":"udp:nope"}]`), &bad); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("bad JSON spec: %v", err)
	}
}

func TestTableConcurrent(t *testing.T) {
	tab := NewTable()
	grp := mustParse(t, "udp:239.9.9.9:9")
	var wg sync.WaitGroup
	for vi := range VIID(8) {
		wg.Go(func() {
			for port := range uint16(50) {
				var s Spec
				if err := s.SetIP4Local(ProtoUDP, netip.MustParseAddr("10.0.0.1"), 1000+port); err != nil {
					t.Error(err)
					return
				}
				_, _ = tab.Add(vi, s) // exactly one VI wins each port
				if _, err := tab.Add(vi, grp); err != nil {
					if !errors.Is(err, syscall.EEXIST) {
						t.Error(err)
					}
				}
				_ = tab.List()
				_ = tab.Owners(grp)
			}
		})
	}
	wg.Wait()
	if tab.Len() != 50+8 {
		t.Fatalf("Len = %d, want 58", tab.Len())
	}
	if got := tab.Owners(grp); len(got) != 8 {
		t.Fatalf("group owners %v", got)
	}
	total := 0
	for vi := range VIID(8) {
		total += len(tab.RemoveOwner(vi))
	}
	if total != 58 || tab.Len() != 0 {
		t.Fatalf("removed %d, left %d", total, tab.Len())
	}
}
