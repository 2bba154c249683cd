// Package image builds container images as docker-archive tarballs (the
// format `docker save` writes and `ctr images import` reads) from files on
// the host, without a Docker engine or a registry.
//
// An image is one layer holding the listed files, directories and symlinks,
// plus a config (entrypoint, env, working directory). Output is
// deterministic: every entry has mtime 0, uid/gid 0, entries are sorted, and
// the same inputs give the same bytes and so the same image ID. That lets a
// node skip re-importing an unchanged image and keeps CI cache keys stable.
//
// The archive holds manifest.json, the config blob <sha256>.json and the
// layer <diffID>/layer.tar, like `docker save`. [Read] parses one back (for
// tests and for checking what a tarball contains).
package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// File puts the host file Src at the absolute image path Dst.
type File struct {
	Src string
	Dst string
	// Mode is the file's permission bits in the image; 0 keeps the source's.
	Mode fs.FileMode
}

// Symlink makes the image path Dst a symlink to Target.
type Symlink struct {
	Dst    string
	Target string
}

// Spec describes one image.
type Spec struct {
	// Ref is the image name containerd records, e.g. localhost/kube-efvi/agent:dev.
	Ref      string
	Files    []File
	Symlinks []Symlink
	// Dirs are extra empty directories (mode 0755, or 01777 for /tmp).
	Dirs       []string
	Entrypoint []string
	Cmd        []string
	// Env defaults to PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin.
	Env     []string
	WorkDir string
	User    string
	Labels  map[string]string
	// Arch is the GOARCH-style architecture (default amd64).
	Arch string
}

// DefaultPath is the PATH images get when Spec.Env is empty.
const DefaultPath = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

// Result names what Write produced.
type Result struct {
	// ID is the image ID: sha256 of the config blob ("sha256:...").
	ID string
	// DiffID is the sha256 of the uncompressed layer.
	DiffID string
}

// config is the subset of the OCI/Docker image config written.
type config struct {
	Architecture string       `json:"architecture"`
	OS           string       `json:"os"`
	Created      string       `json:"created"`
	Config       runConfig    `json:"config"`
	RootFS       rootFS       `json:"rootfs"`
	History      []historyEnt `json:"history,omitempty"`
}

type runConfig struct {
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	User       string            `json:"User,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type historyEnt struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

type manifestEnt struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// epoch is the fixed timestamp of every entry.
var epoch = time.Unix(0, 0).UTC()

// Validate reports every problem with the spec.
func (s Spec) Validate() error {
	var errs []error
	if s.Ref == "" {
		errs = append(errs, errors.New("ref is empty: name the image, e.g. localhost/kube-efvi/agent:dev"))
	} else if !strings.Contains(lastElem(s.Ref), ":") {
		errs = append(errs, fmt.Errorf("ref %q has no tag: add one, e.g. %s:dev", s.Ref, s.Ref))
	}
	seen := map[string]string{}
	claim := func(p, what string) {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			errs = append(errs, fmt.Errorf("%s: image path %q must be absolute and clean (e.g. /usr/bin/tool)", what, p))
			return
		}
		if prev, ok := seen[p]; ok {
			errs = append(errs, fmt.Errorf("%s: image path %q is already used by %s", what, p, prev))
			return
		}
		seen[p] = what
	}
	for _, f := range s.Files {
		if f.Src == "" {
			errs = append(errs, fmt.Errorf("file for %q has no source path", f.Dst))
		}
		claim(f.Dst, "file "+f.Src)
	}
	for _, l := range s.Symlinks {
		if l.Target == "" {
			errs = append(errs, fmt.Errorf("symlink %q has no target", l.Dst))
		}
		claim(l.Dst, "symlink -> "+l.Target)
	}
	for _, d := range s.Dirs {
		claim(d, "directory")
	}
	return errors.Join(errs...)
}

func lastElem(ref string) string {
	if i := strings.LastIndex(ref, "/"); i >= 0 {
		return ref[i+1:]
	}
	return ref
}

// entry is one tar entry of the layer.
type entry struct {
	path   string // without leading slash
	typ    byte
	mode   int64
	src    string // regular files
	target string // symlinks
}

// layerEntries lists every entry, with parent directories, sorted by path.
func (s Spec) layerEntries() ([]entry, error) {
	ents := map[string]entry{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			k := strings.TrimPrefix(d, "/")
			if _, ok := ents[k]; !ok {
				ents[k] = entry{path: k, typ: tar.TypeDir, mode: 0o755}
			}
		}
	}
	for _, d := range s.Dirs {
		mode := int64(0o755)
		if d == "/tmp" {
			mode = 0o1777
		}
		ents[strings.TrimPrefix(d, "/")] = entry{path: strings.TrimPrefix(d, "/"), typ: tar.TypeDir, mode: mode}
		addParents(d)
	}
	for _, f := range s.Files {
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, fmt.Errorf("file %s for %s: %w", f.Src, f.Dst, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("file %s for %s is not a regular file (%s)", f.Src, f.Dst, st.Mode().Type())
		}
		mode := f.Mode.Perm()
		if f.Mode == 0 {
			mode = st.Mode().Perm()
		}
		k := strings.TrimPrefix(f.Dst, "/")
		ents[k] = entry{path: k, typ: tar.TypeReg, mode: int64(mode), src: f.Src}
		addParents(f.Dst)
	}
	for _, l := range s.Symlinks {
		k := strings.TrimPrefix(l.Dst, "/")
		ents[k] = entry{path: k, typ: tar.TypeSymlink, mode: 0o777, target: l.Target}
		addParents(l.Dst)
	}
	for k, e := range ents {
		if e.typ == tar.TypeDir {
			continue
		}
		// A directory implied by another entry must not also be a file.
		for d := path.Dir("/" + k); d != "/"; d = path.Dir(d) {
			if p, ok := ents[strings.TrimPrefix(d, "/")]; ok && p.typ != tar.TypeDir {
				return nil, fmt.Errorf("image path %s is both a file and the parent directory of /%s", d, k)
			}
		}
	}
	out := make([]entry, 0, len(ents))
	for _, e := range ents {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out, nil
}

// writeLayer writes the layer tar to w.
func writeLayer(w io.Writer, ents []entry) error {
	tw := tar.NewWriter(w)
	for _, e := range ents {
		h := &tar.Header{
			Typeflag: e.typ, Mode: e.mode, ModTime: epoch, Uid: 0, Gid: 0,
			Uname: "", Gname: "", Format: tar.FormatPAX,
		}
		switch e.typ {
		case tar.TypeDir:
			h.Name = e.path + "/"
		case tar.TypeSymlink:
			h.Name, h.Linkname = e.path, e.target
		case tar.TypeReg:
			h.Name = e.path
		}
		if e.typ != tar.TypeReg {
			if err := tw.WriteHeader(h); err != nil {
				return fmt.Errorf("layer entry %s: %w", e.path, err)
			}
			continue
		}
		if err := copyFileEntry(tw, h, e.src); err != nil {
			return err
		}
	}
	return tw.Close()
}

func copyFileEntry(tw *tar.Writer, h *tar.Header, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	h.Size = st.Size()
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("layer entry %s: %w", h.Name, err)
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("copy %s into the layer: %w", src, err)
	}
	if n != h.Size {
		return fmt.Errorf("copy %s: file changed size while building (%d != %d bytes)", src, n, h.Size)
	}
	return nil
}

// Write writes the image as a docker-archive to w.
func Write(w io.Writer, s Spec) (Result, error) {
	if err := s.Validate(); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	ents, err := s.layerEntries()
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	// The layer is buffered: its digest names it inside the archive, and
	// the images here are a few tens of MB.
	var layer bytes.Buffer
	if err := writeLayer(&layer, ents); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	diff := sha256.Sum256(layer.Bytes())
	diffHex := hex.EncodeToString(diff[:])

	arch := s.Arch
	if arch == "" {
		arch = "amd64"
	}
	env := s.Env
	if len(env) == 0 {
		env = []string{DefaultPath}
	}
	wd := s.WorkDir
	if wd == "" {
		wd = "/"
	}
	cfg := config{
		Architecture: arch, OS: "linux", Created: epoch.Format(time.RFC3339),
		Config:  runConfig{Entrypoint: s.Entrypoint, Cmd: s.Cmd, Env: env, WorkingDir: wd, User: s.User, Labels: s.Labels},
		RootFS:  rootFS{Type: "layers", DiffIDs: []string{"sha256:" + diffHex}},
		History: []historyEnt{{Created: epoch.Format(time.RFC3339), CreatedBy: "kube-efvi internal/image"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encode config: %w", s.Ref, err)
	}
	cfgSum := sha256.Sum256(cfgJSON)
	cfgHex := hex.EncodeToString(cfgSum[:])
	man, err := json.Marshal([]manifestEnt{{Config: cfgHex + ".json", RepoTags: []string{s.Ref}, Layers: []string{diffHex + "/layer.tar"}}})
	if err != nil {
		return Result{}, fmt.Errorf("image %s: encode manifest: %w", s.Ref, err)
	}

	tw := tar.NewWriter(w)
	put := func(name string, b []byte) error {
		h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: diffHex + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
		return Result{}, fmt.Errorf("image %s: write archive: %w", s.Ref, err)
	}
	for _, p := range []struct {
		name string
		b    []byte
	}{{diffHex + "/layer.tar", layer.Bytes()}, {cfgHex + ".json", cfgJSON}, {"manifest.json", man}} {
		if err := put(p.name, p.b); err != nil {
			return Result{}, fmt.Errorf("image %s: write archive entry %s: %w", s.Ref, p.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return Result{}, fmt.Errorf("image %s: write archive: %w", s.Ref, err)
	}
	return Result{ID: "sha256:" + cfgHex, DiffID: "sha256:" + diffHex}, nil
}

// WriteFile writes the archive to path atomically (a temp file renamed into
// place), creating the parent directory.
func WriteFile(p string, s Spec) (Result, error) {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return Result{}, fmt.Errorf("image %s: %w", s.Ref, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	res, err := Write(tmp, s)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		return Result{}, fmt.Errorf("image %s: write %s: %w", s.Ref, p, err)
	}
	return res, nil
}
