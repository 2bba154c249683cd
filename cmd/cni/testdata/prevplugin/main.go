// Command prevplugin is a test-only main CNI plugin: ADD returns a CNI 1.0
// result whose IPs come from CNI_ARGS TEST_IPS (comma-separated CIDRs), so
// efvi-cni chained after it gets a prevResult as from a real pod network.
// Every other command succeeds doing nothing.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	nothing := func(*skel.CmdArgs) error { return nil }
	skel.PluginMainFuncs(skel.CNIFuncs{Add: add, Del: nothing, Check: nothing, GC: nothing, Status: nothing},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"), "test prevResult plugin")
}

func add(args *skel.CmdArgs) error {
	conf := struct {
		CNIVersion string `json:"cniVersion"`
	}{}
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return err
	}
	res := &types100.Result{CNIVersion: conf.CNIVersion,
		Interfaces: []*types100.Interface{{Name: args.IfName, Sandbox: args.Netns}}}
	for _, kv := range strings.Split(args.Args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		if k != "TEST_IPS" {
			continue
		}
		for _, c := range strings.Split(v, ",") {
			ip, n, err := net.ParseCIDR(c)
			if err != nil {
				return fmt.Errorf("TEST_IPS %q: %w", c, err)
			}
			n.IP = ip
			zero := 0
			res.IPs = append(res.IPs, &types100.IPConfig{Interface: &zero, Address: *n})
		}
	}
	return types.PrintResult(res, conf.CNIVersion)
}
