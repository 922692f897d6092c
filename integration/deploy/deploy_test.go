// Package deploy checks that the deployment files agree with README.md:
// every setting of its configuration tables reaches the services from
// .env through docker-compose.yml, and .env.example lists it.
package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// wiring are the variables docker-compose.yml sets itself, because they
// connect the services (ports, the relayer's address, the data volume) or
// must differ between replicas (INSTANCE_ID: each names itself).
// NATS_URL is wiring too, though still taken from the environment when
// set: its default there is the NATS profile's three nodes
// (${NATS_URL:-nats://nats-1:4222,...}), where the binary's is empty.
var wiring = []string{"HOST", "PORT", "RELAYER_URL", "DATA_DIR", "INSTANCE_ID", "NATS_URL"}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tableVars returns the variables of the README table under heading.
func tableVars(t *testing.T, readme, heading string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q", heading)
	}
	var vars []string
	started := false
	for line := range strings.SplitSeq(rest, "\n") {
		if !strings.HasPrefix(line, "|") {
			if started {
				break
			}
			continue
		}
		started = true
		first := strings.Split(line, "|")[1]
		for _, m := range regexp.MustCompile("`([A-Z][A-Z0-9_]*)`").FindAllStringSubmatch(first, -1) {
			vars = append(vars, m[1])
		}
	}
	if len(vars) == 0 {
		t.Fatalf("README.md's table under %q lists no variables", heading)
	}
	return vars
}

func TestEverySettingPassesThroughCompose(t *testing.T) {
	readme := read(t, "README.md")
	example := read(t, ".env.example")
	var compose struct {
		Services map[string]struct {
			Environment map[string]*string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "docker-compose.yml")), &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, tc := range []struct{ heading, service string }{
		{"### ws-user", "ws-user"},
		{"### ws-relayer", "relayer"},
	} {
		env := compose.Services[tc.service].Environment
		documented := tableVars(t, readme, tc.heading)
		for _, v := range documented {
			if slices.Contains(wiring, v) {
				continue
			}
			value, ok := env[v]
			switch {
			case !ok:
				t.Errorf("%s: %s (README.md) is not passed through docker-compose.yml", tc.service, v)
			case value != nil && !strings.Contains(*value, "${"+v):
				t.Errorf("%s: docker-compose.yml fixes %s to %q instead of passing it through", tc.service, v, *value)
			}
			if !regexp.MustCompile(`(?m)^#? ?` + v + `=`).MatchString(example) {
				t.Errorf(".env.example does not list %s", v)
			}
		}
		for v := range env {
			if !slices.Contains(documented, v) {
				t.Errorf("%s: docker-compose.yml sets %s, which README.md's %q table does not document", tc.service, v, tc.heading)
			}
		}
	}
}
