// Command mkimage builds a docker-archive image tarball from host files
// (static binaries), deterministically, without Docker. Import the result
// with `ctr -n k8s.io images import OUT`.
//
//	go run ./internal/image/cmd/mkimage --ref localhost/kube-efvi/agent:dev \
//	    --out out/images/agent.tar --entrypoint /usr/bin/efvi-agent \
//	    bin/efvi-agent:/usr/bin/efvi-agent bin/efvi-cni:/usr/bin/efvi-cni
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/kube-efvi/kube-efvi/internal/image"
)

// busyboxApplets are linked to /bin/busybox with --busybox.
var busyboxApplets = []string{
	"sh", "ash", "ls", "cat", "cp", "mv", "rm", "mkdir", "ln", "echo", "env", "printenv", "sleep", "test", "[",
	"grep", "sed", "awk", "head", "tail", "wc", "sort", "cut", "tr", "date", "hostname", "id", "ps", "kill",
	"ip", "ping", "nc", "wget", "ifconfig", "netstat", "mount", "stat", "find", "xargs", "true", "false", "timeout", "vi",
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

const usage = `mkimage: build a docker-archive image tarball from host files, without Docker.

Usage:
  mkimage --ref NAME:TAG --out FILE.tar [flags] SRC:DST [SRC:DST ...]

Each SRC:DST puts the host file SRC at the absolute image path DST (a
trailing / in DST keeps SRC's base name: bin/tool:/usr/bin/). The output is
deterministic (mtime 0, uid 0, sorted). Import with:
  ctr -n k8s.io images import FILE.tar

Flags:
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(2)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	var (
		ref        = fs.String("ref", "", "image name with tag, e.g. localhost/kube-efvi/agent:dev (required)")
		out        = fs.String("out", "", "output tarball (required)")
		entrypoint = fs.String("entrypoint", "", "entrypoint, space-separated (e.g. \"/usr/bin/efvi-agent\")")
		cmd        = fs.String("cmd", "", "default arguments, space-separated")
		workdir    = fs.String("workdir", "/", "working directory")
		user       = fs.String("user", "", "user (uid[:gid]) the image runs as by default")
		busybox    = fs.String("busybox", "", "host path of a static busybox: installed as /bin/busybox with applet links (sh, ls, ip, ...)")
		env, links multi
		dirs       multi
	)
	fs.Var(&env, "env", "KEY=VALUE (repeatable; default PATH only)")
	fs.Var(&links, "link", "DST=TARGET symlink (repeatable)")
	fs.Var(&dirs, "dir", "empty directory (repeatable; /tmp gets mode 1777)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *out == "" {
		fs.Usage()
		return errors.New("--ref and --out are required")
	}
	s := image.Spec{Ref: *ref, Entrypoint: fields(*entrypoint), Cmd: fields(*cmd), WorkDir: *workdir, User: *user, Dirs: dirs}
	if len(env) > 0 {
		s.Env = append([]string{image.DefaultPath}, env...)
	}
	for _, a := range fs.Args() {
		src, dst, ok := strings.Cut(a, ":")
		if !ok || src == "" || dst == "" {
			return fmt.Errorf("argument %q: want SRC:DST, e.g. bin/efvi-agent:/usr/bin/efvi-agent", a)
		}
		if strings.HasSuffix(dst, "/") {
			dst += path.Base(src)
		}
		s.Files = append(s.Files, image.File{Src: src, Dst: dst})
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("--link %q: want DST=TARGET, e.g. /bin/sh=busybox", l)
		}
		s.Symlinks = append(s.Symlinks, image.Symlink{Dst: dst, Target: target})
	}
	if *busybox != "" {
		s.Files = append(s.Files, image.File{Src: *busybox, Dst: "/bin/busybox", Mode: 0o755})
		for _, a := range busyboxApplets {
			s.Symlinks = append(s.Symlinks, image.Symlink{Dst: "/bin/" + a, Target: "busybox"})
		}
		s.Dirs = append(s.Dirs, "/tmp")
	}
	res, err := image.WriteFile(*out, s)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s -> %s\n", *ref, res.ID, *out)
	return nil
}

func fields(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Fields(s)
}
