// Package settings loads a service's configuration from its environment
// the one way both services do: a struct whose fields carry `env` tags and
// their defaults (`envDefault`), the one place each default is written.
//
// Secrets may come from files instead (Docker and Kubernetes secrets are
// mounted as files), field by field: a field tagged `settings:"file"`,
//
//	RelaySecret string `env:"RELAY_SECRET" settings:"file"`
//
// also reads the companion variable RELAY_SECRET_FILE (the variable's
// name and "_FILE"), which names a file whose content, less trailing
// newlines ("\n", "\r\n"), is the value. Setting both is an error, and so
// is a file that cannot be read or is empty; errors name the file, never
// its content. Fields without the tag have no companion variable.
package settings

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"strings"

	"github.com/caarlos0/env/v11"
)

// FileSuffix ends the name of a file-backed variable's companion:
// RELAY_SECRET_FILE for RELAY_SECRET.
const FileSuffix = "_FILE"

// maxFileBytes bounds what a companion file may hold: a secret, not a
// device someone named by mistake (/dev/zero would never end).
const maxFileBytes = 64 << 10

// Load fills the struct v points to from getenv, so that tests need no
// process environment. An empty variable counts as unset: "PORT=" in a
// compose file means the default, not an error. Parse errors name the
// variable and the value, not the Go field (and not the value of one read
// from a file).
func Load(v any, getenv func(string) string) error {
	params, err := env.GetFieldParams(v)
	if err != nil {
		return err
	}
	t := reflect.TypeOf(v).Elem()
	fileKeys, err := fileBacked(t)
	if err != nil {
		return err
	}
	vars := make(map[string]string, len(params))
	for _, p := range params {
		if val := getenv(p.Key); val != "" {
			vars[p.Key] = val
		}
	}
	// fromFile: the variables read from a file, by the file's name.
	fromFile := map[string]string{}
	var errs []error
	for _, key := range fileKeys {
		name := getenv(key + FileSuffix)
		if name == "" {
			continue
		}
		if _, ok := vars[key]; ok {
			errs = append(errs, fmt.Errorf("%s and %s%s are both set: set only one (the value, or the file that holds it)", key, key, FileSuffix))
			continue
		}
		val, err := readValue(name)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%s=%q: %w", key, FileSuffix, name, err))
			continue
		}
		vars[key] = val
		fromFile[key] = name
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := env.ParseWithOptions(v, env.Options{Environment: vars}); err != nil {
		return explain(err, t, vars, fromFile)
	}
	return nil
}

// fileBacked returns the variables of struct type t whose fields are
// tagged `settings:"file"`.
func fileBacked(t reflect.Type) ([]string, error) {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		opt, ok := f.Tag.Lookup("settings")
		if !ok {
			continue
		}
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if opt != "file" || key == "" {
			return nil, fmt.Errorf("settings: field %s: tag settings:%q needs an env tag and the option \"file\"", f.Name, opt)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// readValue returns the content of the file name, less trailing newlines.
// Its errors say what is wrong with the file, never what is in it.
func readValue(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", fmt.Errorf("cannot open the file: %w", cause(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("cannot read the file: %w", cause(err))
	case len(b) > maxFileBytes:
		return "", fmt.Errorf("the file holds more than %d bytes", maxFileBytes)
	}
	val := strings.TrimRight(string(b), "\r\n")
	if val == "" {
		return "", errors.New("the file is empty")
	}
	return val, nil
}

// cause is the reason of a file system error without the path, which the
// caller names once.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// explain renames env's parse errors, which name Go struct fields, after
// the variables an operator actually sets. A value read from a file is not
// repeated: it may be a secret.
func explain(err error, t reflect.Type, vars, fromFile map[string]string) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
				if name, ok := fromFile[key]; ok {
					e = fmt.Errorf("%s (read from %s%s=%q) is not a valid %s", key, key, FileSuffix, name, pe.Type)
				} else {
					e = fmt.Errorf("%s=%q is not a valid %s: %w", key, vars[key], pe.Type, pe.Err)
				}
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// Defaults returns the default of every variable of the struct type T, by
// name ("" for those without one), for checks that documentation shows
// the defaults the code has. The companion <NAME>_FILE of a file-backed
// variable is one of them, with no default.
func Defaults[T any]() map[string]string {
	out := map[string]string{}
	t := reflect.TypeFor[T]()
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if key == "" {
			continue
		}
		out[key] = f.Tag.Get("envDefault")
		if f.Tag.Get("settings") == "file" {
			out[key+FileSuffix] = ""
		}
	}
	return out
}
