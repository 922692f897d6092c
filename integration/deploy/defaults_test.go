package deploy

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	relayerapp "github.com/wschat/wschat/services/relayer/app"
	"github.com/wschat/wschat/services/settings"
	userapp "github.com/wschat/wschat/services/user/app"
)

// tableDefaults returns the default column of the README table under
// heading, by variable.
func tableDefaults(t *testing.T, readme, heading string) map[string]string {
	t.Helper()
	_, rest, _ := strings.Cut(readme, "\n"+heading+"\n")
	out := map[string]string{}
	for _, v := range tableVars(t, readme, heading) {
		row := regexp.MustCompile("(?m)^\\| [^|]*`" + v + "`[^|]*\\|([^|]*)\\|").FindStringSubmatch(rest)
		if row != nil {
			out[v] = strings.TrimSpace(row[1])
		}
	}
	return out
}

// Each default is written once, in the service's Config (its envDefault
// tags): README.md's table and .env.example show that one.
func TestDocumentedDefaultsAreTheCodes(t *testing.T) {
	readme := read(t, "README.md")
	example := read(t, ".env.example")
	for _, tc := range []struct {
		heading  string
		defaults map[string]string
	}{
		{"### ws-user", settings.Defaults[userapp.Config]()},
		{"### ws-relayer", settings.Defaults[relayerapp.Config]()},
	} {
		documented := tableDefaults(t, readme, tc.heading)
		for v, def := range tc.defaults {
			cell, ok := documented[v]
			if !ok {
				t.Errorf("%s: %s (default %q) is not in README.md's table", tc.heading, v, def)
				continue
			}
			if def != "" && !strings.Contains(cell, "`"+def+"`") {
				t.Errorf("%s: README.md shows %s's default as %q; the code's is %q", tc.heading, v, cell, def)
			}
			if def == "" || slices.Contains(wiring, v) {
				continue
			}
			if m := regexp.MustCompile(`(?m)^#? ?` + v + `=(.*)$`).FindStringSubmatch(example); m == nil || m[1] != def {
				t.Errorf(".env.example shows %s as %v; the code's default is %q", v, m, def)
			}
		}
	}
}
