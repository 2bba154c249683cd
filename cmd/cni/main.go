// Command efvi-cni is kube-efvi's chained CNI plugin. It forwards each pod
// attachment (ADD, DEL, CHECK, GC, STATUS) to the node agent, which installs
// and removes the filters that steer the pod's IPs to its VIs.
package main

import (
	"fmt"
	"os"
)

const usage = `efvi-cni: the kube-efvi chained CNI plugin.

It is run by the container runtime with CNI_COMMAND set, never by hand.

What it does today:
  Nothing yet beyond this help; the agent API arrives with its issue.
`

func main() {
	for _, a := range os.Args[1:] {
		if a == "--help" || a == "-h" || a == "help" {
			fmt.Print(usage)
			return
		}
	}
	fmt.Fprint(os.Stderr, usage)
	os.Exit(2)
}
