package settings

import (
	"strings"
	"testing"
	"time"
)

type sample struct {
	Port    int           `env:"PORT" envDefault:"8080"`
	Timeout time.Duration `env:"TIMEOUT" envDefault:"5s"`
	Name    string        `env:"NAME"`
}

func getenv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadReadsDefaultsAndValues(t *testing.T) {
	var s sample
	if err := Load(&s, getenv(map[string]string{"TIMEOUT": "2s", "NAME": "x", "PORT": ""})); err != nil {
		t.Fatal(err)
	}
	if s.Port != 8080 || s.Timeout != 2*time.Second || s.Name != "x" {
		t.Fatalf("loaded %+v: want the default port (empty is unset), TIMEOUT and NAME", s)
	}
}

func TestLoadNamesTheVariableOfABadValue(t *testing.T) {
	var s sample
	err := Load(&s, getenv(map[string]string{"PORT": "eighty", "TIMEOUT": "soon"}))
	if err == nil {
		t.Fatal("no error for PORT=eighty")
	}
	for _, want := range []string{`PORT="eighty" is not a valid int`, `TIMEOUT="soon" is not a valid time.Duration`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	d := Defaults[sample]()
	if len(d) != 3 || d["PORT"] != "8080" || d["TIMEOUT"] != "5s" || d["NAME"] != "" {
		t.Fatalf("defaults %v", d)
	}
}
