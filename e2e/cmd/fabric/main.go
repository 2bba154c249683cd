// Command fabric brings the e2e fabric (package e2e/fabric) up or down:
//
//	go run ./e2e/cmd/fabric up|down|status
package main

import (
	"fmt"
	"os"

	"github.com/kube-efvi/kube-efvi/e2e/fabric"
)

func main() {
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
