// Command efvi-agent is kube-efvi's node agent. It owns everything privileged
// on a node: port discovery, the kubelet device-plugin servers that advertise
// VI capacity, VI slot allocation, the per-allocation broker sockets that hand
// VIs to unprivileged pods, the filter tables and the software data plane.
package main

import (
	"flag"
	"fmt"
	"os"
)

const usage = `efvi-agent: the kube-efvi node agent.

Usage:
  efvi-agent [flags]

What it does today:
  Nothing yet beyond this help: discovery, the device plugin, the broker and
  the data plane arrive with their issues. Run with --help to see this text.

Flags:
`

func main() {
	fs := flag.NewFlagSet("efvi-agent", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	fs.Usage()
	os.Exit(2)
}
