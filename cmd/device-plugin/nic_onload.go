//go:build onload

package main

import (
	"github.com/kube-efvi/kube-efvi/pkg/hwvi"
	"github.com/kube-efvi/kube-efvi/pkg/hwvi/onload"
)

// hardwareNIC: libciul, linked at build time from ONLOAD_PREFIX.
func hardwareNIC() (hwvi.NIC, string) { return onload.NIC{}, "" }
