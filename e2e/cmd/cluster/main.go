// Command cluster brings the e2e Kubernetes cluster up or down on this host
// (see package e2e/cluster). Run it from the repository root as root:
//
//	go run ./e2e/cmd/cluster up      # build/cache Kubernetes, start everything, wait for Node Ready
//	go run ./e2e/cmd/cluster down    # stop everything, clean up (logs and binary cache stay)
//	go run ./e2e/cmd/cluster env     # print KUBECONFIG=... and the kubectl path
//	go run ./e2e/cmd/cluster restart-kubelet
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kube-efvi/kube-efvi/e2e/cluster"
)

const usage = `cluster: the kube-efvi e2e cluster (a real single-node Kubernetes on this host).

Usage:
  cluster [flags] up|down|env|restart-kubelet

  up               apt packages, Kubernetes (built once into the cache dir), CNI
                   plugins, containerd, PKI, control plane, kubelet; waits for
                   Node Ready. Stops a previous run first.
  down             stops everything and removes the cluster's state; logs and
                   the binary cache stay.
  env              prints shell exports: KUBECONFIG, KUBECTL, E2E_LOG_DIR, E2E_NODE.
  restart-kubelet  stops and starts the kubelet (pods keep running).

Flags:
`

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	var o cluster.Options
	fs.StringVar(&o.WorkDir, "work-dir", cluster.DefaultWorkDir, "PKI, configs, pids, etcd data and logs (<dir>/logs)")
	fs.StringVar(&o.CacheDir, "cache-dir", cluster.DefaultCacheDir, "built Kubernetes binaries, kept across runs")
	fs.StringVar(&o.K8sVersion, "k8s-version", cluster.DefaultK8sVersion, "Kubernetes version (needs every staging module on the Go proxy)")
	fs.StringVar(&o.NodeIP, "node-ip", "", "node address (default: source address of the default route)")
	fs.BoolVar(&o.SkipApt, "skip-apt", false, "do not install missing Debian packages")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this long")
	verbose := fs.Bool("v", false, "debug logs")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	c, err := cluster.New(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	t0 := time.Now()
	switch fs.Arg(0) {
	case "up":
		err = c.Up(ctx)
	case "down":
		err = c.Down(ctx)
	case "env":
		fmt.Printf("export KUBECONFIG=%s\nexport KUBECTL=%s\nexport E2E_LOG_DIR=%s\nexport E2E_NODE=%s\n",
			c.Kubeconfig(), c.Kubectl(), c.LogDir(), c.NodeName())
		return 0
	case "restart-kubelet":
		if err = c.StopKubelet(ctx); err == nil {
			err = c.StartKubelet(ctx)
		}
	default:
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster %s: %v\n", fs.Arg(0), err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster %s: done in %s\n", fs.Arg(0), time.Since(t0).Round(time.Second))
	if fs.Arg(0) == "up" {
		fmt.Fprintf(os.Stderr, "export KUBECONFIG=%s   # kubectl: %s\n", c.Kubeconfig(), c.Kubectl())
	}
	return 0
}
