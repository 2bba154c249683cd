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
	"strings"
)

// Archive is a docker-archive read back by [Read].
type Archive struct {
	// RepoTags are the names the manifest gives the image.
	RepoTags []string
	// ID is sha256 of the config blob.
	ID string
	// Architecture, OS, Entrypoint, Cmd, Env, WorkingDir come from the config.
	Architecture, OS string
	Entrypoint, Cmd  []string
	Env              []string
	WorkingDir, User string
	// DiffIDs are the config's layer digests (checked against the layers).
	DiffIDs []string
	// Entries is the union of the layers' entries by absolute path.
	Entries map[string]Entry
}

// Entry is one file, directory or symlink of a layer.
type Entry struct {
	Type     byte // tar.TypeReg, tar.TypeDir, tar.TypeSymlink
	Mode     fs.FileMode
	Size     int64
	Linkname string
	// SHA256 is the hex digest of a regular file's content.
	SHA256 string
	UID    int
	GID    int
	ModUnx int64
}

// maxMetaBytes bounds manifest.json and the config blob.
const maxMetaBytes = 1 << 20

// ReadFile reads the docker-archive at path.
func ReadFile(path string) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	defer f.Close()
	a, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", path, err)
	}
	return a, nil
}

// Read parses a docker-archive holding one image: the manifest, the config,
// and each layer (whose digest must match the config's diff_ids).
func Read(r io.Reader) (*Archive, error) {
	files := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("not a tar archive: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("archive entry %s: %w", h.Name, err)
		}
		files[h.Name] = b
	}
	manB, ok := files["manifest.json"]
	if !ok {
		return nil, errors.New("no manifest.json: not a docker-archive (docker save format)")
	}
	var man []manifestEnt
	if err := json.Unmarshal(manB, &man); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	if len(man) != 1 {
		return nil, fmt.Errorf("manifest.json lists %d images, want 1", len(man))
	}
	m := man[0]
	cfgB, ok := files[m.Config]
	if !ok {
		return nil, fmt.Errorf("manifest names config %q, which the archive lacks", m.Config)
	}
	if len(cfgB) > maxMetaBytes {
		return nil, fmt.Errorf("config %s is %d bytes, more than %d", m.Config, len(cfgB), maxMetaBytes)
	}
	var cfg config
	if err := json.Unmarshal(cfgB, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config, err)
	}
	sum := sha256.Sum256(cfgB)
	a := &Archive{
		RepoTags: m.RepoTags, ID: "sha256:" + hex.EncodeToString(sum[:]),
		Architecture: cfg.Architecture, OS: cfg.OS,
		Entrypoint: cfg.Config.Entrypoint, Cmd: cfg.Config.Cmd, Env: cfg.Config.Env,
		WorkingDir: cfg.Config.WorkingDir, User: cfg.Config.User,
		DiffIDs: cfg.RootFS.DiffIDs, Entries: map[string]Entry{},
	}
	if len(m.Layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("manifest lists %d layers but the config has %d diff_ids", len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, ln := range m.Layers {
		lb, ok := files[ln]
		if !ok {
			return nil, fmt.Errorf("manifest names layer %q, which the archive lacks", ln)
		}
		ls := sha256.Sum256(lb)
		if got := "sha256:" + hex.EncodeToString(ls[:]); got != cfg.RootFS.DiffIDs[i] {
			return nil, fmt.Errorf("layer %s has digest %s, config says %s", ln, got, cfg.RootFS.DiffIDs[i])
		}
		if err := readLayer(bytes.NewReader(lb), a.Entries); err != nil {
			return nil, fmt.Errorf("layer %s: %w", ln, err)
		}
	}
	return a, nil
}

func readLayer(r io.Reader, into map[string]Entry) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := "/" + strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		e := Entry{Type: h.Typeflag, Mode: fs.FileMode(h.Mode & 0o777), Size: h.Size,
			Linkname: h.Linkname, UID: h.Uid, GID: h.Gid, ModUnx: h.ModTime.Unix()}
		if h.Mode&0o1000 != 0 {
			e.Mode |= fs.ModeSticky
		}
		if h.Typeflag == tar.TypeReg {
			d := sha256.New()
			if _, err := io.Copy(d, tr); err != nil {
				return fmt.Errorf("entry %s: %w", h.Name, err)
			}
			e.SHA256 = hex.EncodeToString(d.Sum(nil))
		}
		into[p] = e
	}
}
