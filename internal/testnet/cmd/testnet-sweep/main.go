// Command testnet-sweep removes network namespaces and links left behind by
// test processes that were killed before their cleanups ran. CI runs it before
// the tests; never run it while tests are running.
package main

import (
	"fmt"
	"os"

	"github.com/kube-efvi/kube-efvi/internal/testnet"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Println("testnet-sweep: not root, nothing to sweep")
		return
	}
	removed, err := testnet.Sweep()
	for _, r := range removed {
		fmt.Println("removed", r)
	}
	if err != nil {
		// Names are unique, so a leftover that cannot be removed (e.g. a
		// namespace still mounted elsewhere) cannot disturb new tests: warn.
		fmt.Fprintln(os.Stderr, "testnet-sweep: warning: could not remove every leftover:", err)
	}
}
