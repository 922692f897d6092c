// Package settings loads a service's configuration from its environment
// the one way both services do: a struct whose fields carry `env` tags and
// their defaults (`envDefault`), the one place each default is written.
package settings

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/caarlos0/env/v11"
)

// Load fills the struct v points to from getenv, so that tests need no
// process environment. An empty variable counts as unset: "PORT=" in a
// compose file means the default, not an error. Parse errors name the
// variable and the value, not the Go field.
func Load(v any, getenv func(string) string) error {
	params, err := env.GetFieldParams(v)
	if err != nil {
		return err
	}
	vars := make(map[string]string, len(params))
	for _, p := range params {
		if val := getenv(p.Key); val != "" {
			vars[p.Key] = val
		}
	}
	if err := env.ParseWithOptions(v, env.Options{Environment: vars}); err != nil {
		return explain(err, reflect.TypeOf(v).Elem(), vars)
	}
	return nil
}

// explain renames env's parse errors, which name Go struct fields, after
// the variables an operator actually sets.
func explain(err error, t reflect.Type, vars map[string]string) error {
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return err
	}
	out := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := t.FieldByName(pe.Name); ok {
				key := f.Tag.Get("env")
				e = fmt.Errorf("%s=%q is not a valid %s: %w", key, vars[key], pe.Type, pe.Err)
			}
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

// Defaults returns the default of every variable of the struct type T, by
// name ("" for those without one), for checks that documentation shows
// the defaults the code has.
func Defaults[T any]() map[string]string {
	out := map[string]string{}
	t := reflect.TypeFor[T]()
	for i := range t.NumField() {
		f := t.Field(i)
		if key := f.Tag.Get("env"); key != "" {
			out[key] = f.Tag.Get("envDefault")
		}
	}
	return out
}
