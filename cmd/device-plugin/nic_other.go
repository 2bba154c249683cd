//go:build !onload

package main

import "github.com/kube-efvi/kube-efvi/pkg/hwvi"

// hardwareNIC: this agent is built without Onload's libciul.
func hardwareNIC() (hwvi.NIC, string) {
	return nil, "this efvi-agent was built without the onload build tag: build it with `make build-onload ONLOAD_PREFIX=<Onload install prefix>` " +
		"(go build -tags onload, needing <prefix>/include/etherfabric and <prefix>/lib/libciul from the node's Onload release) " +
		"and run it on a node with Onload's sfc_char driver loaded, or use a software pool"
}
