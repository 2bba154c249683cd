// Command fabric brings the e2e fabric (package e2e/fabric) up or down:
//
//	go run ./e2e/cmd/fabric up|down|status
//	go run ./e2e/cmd/fabric multi-up NAME,PID,ADDR/LEN,PODCIDR...   (several nodes, e.g. kind's)
//	go run ./e2e/cmd/fabric multi-down
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/kube-efvi/kube-efvi/e2e/fabric"
)

func main() {
	if len(os.Args) > 1 && strings.HasPrefix(os.Args[1], "multi-") {
		if err := multi(os.Args[1], os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "fabric:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: fabric up|down|status   (port efvi0 10.210.0.1/24 <-> fabric0 10.210.0.2/24 in netns efvi-fabric)")
		os.Exit(2)
	}
	var c fabric.Config
	var err error
	switch os.Args[1] {
	case "up":
		if err = fabric.Up(c); err == nil {
			var s string
			s, err = fabric.Status(c)
			fmt.Println("fabric up:", s)
		}
	case "down":
		err = fabric.Down(c)
	case "status":
		var s string
		if s, err = fabric.Status(c); err == nil {
			fmt.Println(s)
		}
	default:
		err = fmt.Errorf("unknown command %q: want up, down or status", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fabric:", err)
		os.Exit(1)
	}
}

// multi runs multi-up / multi-down (fabric.Multi with its defaults).
func multi(cmd string, args []string) error {
	var m fabric.Multi
	switch cmd {
	case "multi-down":
		return fabric.DownMulti(m)
	case "multi-up":
	default:
		return fmt.Errorf("unknown command %q: want multi-up or multi-down", cmd)
	}
	if len(args) == 0 {
		return fmt.Errorf("multi-up: want one NAME,PID,ADDR/LEN,PODCIDR per node")
	}
	for _, a := range args {
		f := strings.Split(a, ",")
		if len(f) != 4 {
			return fmt.Errorf("node %q: want NAME,PID,ADDR/LEN,PODCIDR (e.g. kind-worker,1234,10.210.0.12/24,10.244.1.0/24)", a)
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 0 {
			return fmt.Errorf("node %q: PID %q is not a process id", a, f[1])
		}
		m.Nodes = append(m.Nodes, fabric.Node{Name: f[0], PID: pid, Addr: f[2], PodCIDR: f[3]})
	}
	if err := fabric.UpMulti(m); err != nil {
		return err
	}
	fmt.Printf("fabric up: %d nodes, netns %s, bridge %s %s\n", len(m.Nodes), fabric.DefaultMultiNS, fabric.DefaultMultiBridge, fabric.DefaultPeerAddr)
	return nil
}
