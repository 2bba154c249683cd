package config

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Version is the config file's schema version, its top-level `version`
// field. A file written for another version is refused, so the schema can
// change without an old agent misreading a new file.
const Version = "v1"

// SupportedVersions lists the schema versions this agent reads.
func SupportedVersions() []string { return []string{Version} }

// ImplicitVersion reports whether the file had no version field and was
// read as Version. Files written before the field existed keep working; the
// agent logs a note asking for `version: v1`.
func (c *Config) ImplicitVersion() bool { return c.implicitVersion }

// checkVersion reads the version field before the strict decode, so a file
// of an unknown version is refused for its version, not for the fields that
// version may have added.
func checkVersion(data []byte) (implicit bool, err error) {
	var probe struct {
		Version any `json:"version"`
	}
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return false, nil // not a mapping: the strict decode says what is wrong
	}
	switch v := probe.Version.(type) {
	case nil:
		return true, nil
	case string:
		for _, s := range SupportedVersions() {
			if v == s {
				return false, nil
			}
		}
		return false, fmt.Errorf("version: %q is not a config version this agent reads (supported: %s); write the file for one of them or upgrade the agent",
			v, strings.Join(SupportedVersions(), ", "))
	default:
		return false, fmt.Errorf("version: must be a string such as %q, got %v (quote it)", Version, v)
	}
}
