package deploy

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

// docker-compose.secrets.yml hands the relay secret to the relayer and
// every ws-user as a Docker secret: each mounts it, names its mount in
// RELAY_SECRET_FILE (the services read that file: their own tests show
// it) and empties RELAY_SECRET, which the two may not both set; no
// service of the main file lacks it, and the secret comes from a file.
func TestSecretsOverrideHandsTheSecretAsAFile(t *testing.T) {
	type service struct {
		Environment map[string]*string `yaml:"environment"`
		Secrets     []string           `yaml:"secrets"`
	}
	var main struct {
		Services map[string]service `yaml:"services"`
	}
	var over struct {
		Services map[string]service `yaml:"services"`
		Secrets  map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "docker-compose.yml")), &main); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if err := yaml.Unmarshal([]byte(read(t, "docker-compose.secrets.yml")), &over); err != nil {
		t.Fatalf("docker-compose.secrets.yml: %v", err)
	}
	for _, name := range []string{"relayer", "ws-user"} {
		if _, ok := main.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s", name)
		}
		s, ok := over.Services[name]
		if !ok {
			t.Errorf("docker-compose.secrets.yml leaves out %s", name)
			continue
		}
		if len(s.Secrets) != 1 {
			t.Errorf("%s mounts secrets %v, want the relay secret alone", name, s.Secrets)
			continue
		}
		secret := s.Secrets[0]
		if f := over.Secrets[secret].File; f == "" {
			t.Errorf("%s mounts secret %q, which the file does not define from a file", name, secret)
		}
		if v := s.Environment["RELAY_SECRET_FILE"]; v == nil || *v != "/run/secrets/"+secret {
			got := "unset"
			if v != nil {
				got = *v
			}
			t.Errorf("%s: RELAY_SECRET_FILE is %s, want /run/secrets/%s (where Compose mounts it)", name, got, secret)
		}
		if v, ok := s.Environment["RELAY_SECRET"]; !ok || v == nil || *v != "" {
			t.Errorf("%s: RELAY_SECRET must be emptied, or one left in .env meets the file", name)
		}
	}
}
