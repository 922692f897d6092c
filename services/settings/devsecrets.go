package settings

import (
	"fmt"
	"slices"
)

// devSecrets are secrets this repository has published as examples or
// fallbacks (README.md's by-hand example, docker-compose.yml's old
// default): anyone can read them, so a service refuses them unless told it
// runs in development (DEV_MODE=true). Tests use secrets of their own, not
// these.
var devSecrets = []string{
	"dev-secret-123",
	"dev-only-insecure-secret-change-me",
}

// IsDevSecret reports whether s is one of the published development
// secrets.
func IsDevSecret(s string) bool {
	return slices.Contains(devSecrets, s)
}

// CheckDevSecret refuses a published development secret as the value of
// the variable name unless devMode (DEV_MODE=true). The error says what to
// do instead; it does not repeat the value.
func CheckDevSecret(name, value string, devMode bool) error {
	if devMode || !IsDevSecret(value) {
		return nil
	}
	return fmt.Errorf("%s is a development secret published in wschat's own documentation, so anyone can present it: "+
		"set a secret of your own, the same on ws-relayer and every ws-user (the output of openssl rand -hex 32, for example, as %s in .env, "+
		"where make up writes one when there is none), "+
		"or DEV_MODE=true on both to allow it on a machine nobody else can reach", name, name)
}
