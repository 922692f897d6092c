package settings

import (
	"os"
	"path/filepath"
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

type withSecret struct {
	Secret string `env:"SECRET" settings:"file"`
	Count  int    `env:"COUNT" settings:"file"`
	Plain  string `env:"PLAIN"`
}

// writeFile writes content to a new file and returns its name.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

func TestLoadReadsAFileBackedVariableFromItsFile(t *testing.T) {
	for _, content := range []string{"s3cret value", "s3cret value\n", "s3cret value\r\n", "s3cret value\n\n"} {
		var s withSecret
		if err := Load(&s, getenv(map[string]string{"SECRET_FILE": writeFile(t, content), "COUNT_FILE": writeFile(t, "7\n")})); err != nil {
			t.Fatal(err)
		}
		if s.Secret != "s3cret value" || s.Count != 7 {
			t.Errorf("file %q: loaded %+v, want the content less its trailing newlines", content, s)
		}
	}
	// Only tagged fields have a companion; an empty one counts as unset,
	// as an empty variable does.
	var s withSecret
	if err := Load(&s, getenv(map[string]string{"PLAIN_FILE": writeFile(t, "x"), "SECRET": "direct", "SECRET_FILE": ""})); err != nil {
		t.Fatal(err)
	}
	if s.Plain != "" || s.Secret != "direct" {
		t.Errorf("loaded %+v: PLAIN has no companion variable, and SECRET_FILE is empty", s)
	}
}

func TestLoadRefusesBadSecretFilesWithoutShowingTheContent(t *testing.T) {
	const content = "do-not-print-me"
	file := writeFile(t, content)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"both set", map[string]string{"SECRET": "value", "SECRET_FILE": file}, []string{"SECRET and SECRET_FILE are both set"}},
		{"missing file", map[string]string{"SECRET_FILE": missing}, []string{`SECRET_FILE="` + missing + `": cannot open the file: no such file or directory`}},
		{"a directory", map[string]string{"SECRET_FILE": t.TempDir()}, []string{"SECRET_FILE=", "cannot read the file: is a directory"}},
		{"empty file", map[string]string{"SECRET_FILE": writeFile(t, "\n")}, []string{"SECRET_FILE=", "the file is empty"}},
		{"too large", map[string]string{"SECRET_FILE": writeFile(t, strings.Repeat("x", maxFileBytes+1))}, []string{"SECRET_FILE=", "more than 65536 bytes"}},
		{"bad value", map[string]string{"COUNT_FILE": file}, []string{`COUNT (read from COUNT_FILE="` + file + `") is not a valid int`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s withSecret
			err := Load(&s, getenv(tc.env))
			if err == nil {
				t.Fatalf("loaded %+v", s)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), content) {
				t.Errorf("error %q shows the file's content", err)
			}
		})
	}
}

func TestLoadRefusesAMisspelledSettingsTag(t *testing.T) {
	var s struct {
		Secret string `env:"SECRET" settings:"files"`
	}
	if err := Load(&s, getenv(nil)); err == nil || !strings.Contains(err.Error(), `settings:"files"`) {
		t.Fatalf("error %v, want one naming the tag", err)
	}
}

func TestDefaultsListTheFileCompanions(t *testing.T) {
	d := Defaults[withSecret]()
	if len(d) != 5 || d["SECRET_FILE"] != "" || d["COUNT_FILE"] != "" {
		t.Fatalf("defaults %v, want SECRET_FILE and COUNT_FILE besides the three variables", d)
	}
	if _, ok := d["PLAIN_FILE"]; ok {
		t.Fatalf("defaults %v: PLAIN is not file-backed", d)
	}
}

func TestCheckDevSecret(t *testing.T) {
	for _, s := range []string{"dev-secret-123", "dev-only-insecure-secret-change-me"} {
		err := CheckDevSecret("RELAY_SECRET", s, false)
		if err == nil {
			t.Fatalf("%s accepted outside development mode", s)
		}
		for _, w := range []string{"RELAY_SECRET is a development secret", "openssl rand", "DEV_MODE=true"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not say %q", err, w)
			}
		}
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q repeats the secret", err)
		}
		if err := CheckDevSecret("RELAY_SECRET", s, true); err != nil {
			t.Errorf("refused in development mode: %v", err)
		}
	}
	if err := CheckDevSecret("RELAY_SECRET", "a-secret-of-my-own", false); err != nil {
		t.Errorf("refused an unknown secret: %v", err)
	}
}
