package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeTemp(t *testing.T, name string, data []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriteReadBack(t *testing.T) {
	agent := []byte("\x7fELF fake agent binary contents")
	cni := []byte("another binary")
	pa := writeTemp(t, "efvi-agent", agent, 0o755)
	pc := writeTemp(t, "efvi-cni", cni, 0o700)
	s := Spec{
		Ref:        "localhost/kube-efvi/agent:dev",
		Files:      []File{{Src: pa, Dst: "/usr/bin/efvi-agent"}, {Src: pc, Dst: "/usr/bin/efvi-cni", Mode: 0o755}},
		Symlinks:   []Symlink{{Dst: "/bin/agent", Target: "/usr/bin/efvi-agent"}},
		Dirs:       []string{"/tmp", "/run/efvi"},
		Entrypoint: []string{"/usr/bin/efvi-agent"},
		Cmd:        []string{"--log-level", "debug"},
	}
	var buf bytes.Buffer
	res, err := Write(&buf, s)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Read(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.RepoTags, []string{s.Ref}) {
		t.Errorf("RepoTags = %v", a.RepoTags)
	}
	if a.ID != res.ID || !strings.HasPrefix(a.ID, "sha256:") {
		t.Errorf("ID read %s, written %s", a.ID, res.ID)
	}
	if !reflect.DeepEqual(a.DiffIDs, []string{res.DiffID}) {
		t.Errorf("DiffIDs = %v, want [%s]", a.DiffIDs, res.DiffID)
	}
	if a.OS != "linux" || a.Architecture != "amd64" {
		t.Errorf("platform %s/%s", a.OS, a.Architecture)
	}
	if !reflect.DeepEqual(a.Entrypoint, s.Entrypoint) || !reflect.DeepEqual(a.Cmd, s.Cmd) {
		t.Errorf("entrypoint %v cmd %v", a.Entrypoint, a.Cmd)
	}
	if !reflect.DeepEqual(a.Env, []string{DefaultPath}) || a.WorkingDir != "/" {
		t.Errorf("env %v workdir %q", a.Env, a.WorkingDir)
	}
	sum := func(b []byte) string { d := sha256.Sum256(b); return hex.EncodeToString(d[:]) }
	want := map[string]Entry{
		"/usr":                {Type: tar.TypeDir, Mode: 0o755},
		"/usr/bin":            {Type: tar.TypeDir, Mode: 0o755},
		"/usr/bin/efvi-agent": {Type: tar.TypeReg, Mode: 0o755, Size: int64(len(agent)), SHA256: sum(agent)},
		"/usr/bin/efvi-cni":   {Type: tar.TypeReg, Mode: 0o755, Size: int64(len(cni)), SHA256: sum(cni)},
		"/bin":                {Type: tar.TypeDir, Mode: 0o755},
		"/bin/agent":          {Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/usr/bin/efvi-agent"},
		"/tmp":                {Type: tar.TypeDir, Mode: 0o777 | fs.ModeSticky},
		"/run":                {Type: tar.TypeDir, Mode: 0o755},
		"/run/efvi":           {Type: tar.TypeDir, Mode: 0o755},
	}
	if len(a.Entries) != len(want) {
		t.Errorf("layer has %d entries, want %d: %v", len(a.Entries), len(want), a.Entries)
	}
	for p, w := range want {
		g, ok := a.Entries[p]
		if !ok {
			t.Errorf("layer lacks %s", p)
			continue
		}
		if g.ModUnx != 0 || g.UID != 0 || g.GID != 0 {
			t.Errorf("%s: mtime %d uid %d gid %d, want all 0", p, g.ModUnx, g.UID, g.GID)
		}
		g.ModUnx = 0
		if g != w {
			t.Errorf("%s = %+v, want %+v", p, g, w)
		}
	}
}

func TestDeterministic(t *testing.T) {
	p := writeTemp(t, "x", []byte("same bytes"), 0o755)
	s := Spec{Ref: "localhost/x:1", Files: []File{{Src: p, Dst: "/x"}, {Src: p, Dst: "/a/b/y"}}, Entrypoint: []string{"/x"}}
	var b1, b2 bytes.Buffer
	r1, err := Write(&b1, s)
	if err != nil {
		t.Fatal(err)
	}
	// Touch the source: mtimes must not leak into the image.
	if err := os.Chtimes(p, time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	s.Files[0], s.Files[1] = s.Files[1], s.Files[0] // order of inputs does not matter
	r2, err := Write(&b2, s)
	if err != nil {
		t.Fatal(err)
	}
	if r1 != r2 || !bytes.Equal(b1.Bytes(), b2.Bytes()) {
		t.Fatalf("two builds differ: %v vs %v", r1, r2)
	}
	// A content change changes the ID.
	if err := os.WriteFile(p, []byte("other bytes"), 0o755); err != nil {
		t.Fatal(err)
	}
	r3, err := Write(&bytes.Buffer{}, s)
	if err != nil {
		t.Fatal(err)
	}
	if r3.ID == r1.ID {
		t.Fatal("changed content kept the image ID")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	p := writeTemp(t, "bin", []byte("b"), 0o755)
	out := filepath.Join(t.TempDir(), "sub", "img.tar")
	res, err := WriteFile(out, Spec{Ref: "localhost/y:dev", Files: []File{{Src: p, Dst: "/bin/y"}}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != res.ID {
		t.Fatalf("ID %s != %s", a.ID, res.ID)
	}
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 {
		t.Fatalf("output dir holds %d files, want only img.tar (temp file left?)", len(ents))
	}
}

func TestBadSpecs(t *testing.T) {
	p := writeTemp(t, "f", []byte("f"), 0o644)
	dir := t.TempDir()
	cases := []struct {
		name string
		s    Spec
		want string
	}{
		{"no ref", Spec{Files: []File{{Src: p, Dst: "/f"}}}, "ref is empty"},
		{"no tag", Spec{Ref: "localhost/x", Files: []File{{Src: p, Dst: "/f"}}}, "has no tag"},
		{"relative", Spec{Ref: "x:1", Files: []File{{Src: p, Dst: "usr/f"}}}, "must be absolute"},
		{"unclean", Spec{Ref: "x:1", Files: []File{{Src: p, Dst: "/usr/../f"}}}, "must be absolute and clean"},
		{"dup", Spec{Ref: "x:1", Files: []File{{Src: p, Dst: "/f"}}, Symlinks: []Symlink{{Dst: "/f", Target: "g"}}}, "already used"},
		{"missing", Spec{Ref: "x:1", Files: []File{{Src: filepath.Join(dir, "nope"), Dst: "/f"}}}, "no such file"},
		{"dir src", Spec{Ref: "x:1", Files: []File{{Src: dir, Dst: "/f"}}}, "not a regular file"},
		{"file as parent", Spec{Ref: "x:1", Files: []File{{Src: p, Dst: "/a"}, {Src: p, Dst: "/a/b"}}}, "both a file and the parent"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Write(&bytes.Buffer{}, c.s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestReadRejectsCorruptLayer(t *testing.T) {
	p := writeTemp(t, "f", []byte("payload"), 0o644)
	var buf bytes.Buffer
	if _, err := Write(&buf, Spec{Ref: "x:1", Files: []File{{Src: p, Dst: "/f"}}}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	i := bytes.Index(b, []byte("payload"))
	if i < 0 {
		t.Fatal("payload not found in archive")
	}
	b[i] = 'P'
	if _, err := Read(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("corrupt layer: err = %v, want a digest mismatch", err)
	}
	if _, err := Read(strings.NewReader("not a tar")); err == nil {
		t.Fatal("garbage input read without error")
	}
}
