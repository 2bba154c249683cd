package config

import (
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	const pools = "pools:\n- {name: a, backend: software, selector: {interfaces: [eth1]}, visPerPort: 2}\n"
	t.Run("v1", func(t *testing.T) {
		c, err := Parse([]byte("version: v1\n" + pools))
		if err != nil {
			t.Fatal(err)
		}
		if c.Version != "v1" || c.ImplicitVersion() {
			t.Fatalf("version %q implicit %v, want v1 explicit", c.Version, c.ImplicitVersion())
		}
	})
	t.Run("missing is v1, noted", func(t *testing.T) {
		c, err := Parse([]byte(pools))
		if err != nil {
			t.Fatal(err)
		}
		if c.Version != "v1" || !c.ImplicitVersion() {
			t.Fatalf("version %q implicit %v, want v1 implicit", c.Version, c.ImplicitVersion())
		}
	})
	t.Run("empty file", func(t *testing.T) {
		c, err := Parse(nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.Version != "v1" || c.ImplicitVersion() {
			t.Fatalf("version %q implicit %v, want v1 without a note (no file content)", c.Version, c.ImplicitVersion())
		}
	})
	for _, tc := range []struct{ name, data, want string }{
		// Refused for its version, not for a field that version may add.
		{"unknown version", "version: v2\n" + pools + "newField: 1\n", `version: "v2" is not a config version this agent reads (supported: v1)`},
		{"empty string", "version: \"\"\n", `version: "" is not a config version`},
		{"number", "version: 1\n", `version: must be a string such as "v1", got 1`},
		{"list", "version: [v1]\n", "version: must be a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.data))
			if err == nil {
				t.Fatalf("parsed %+v, want an error", c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
}
