package auth

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"lobby", "lobby", true},
		{"lobby", "lobby2", false},
		{"lobby", "lobb", false},
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything at all", true},
		{"team-*", "team-", true},
		{"team-*", "team-red", true},
		{"team-*", "teamred", false},
		{"*-ops", "sre-ops", true},
		{"*-ops", "sre-ops2", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "a-b-b-c", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false}, // the prefix and suffix may not overlap
		{"*ab*b", "ab", false},
		{"*ab*b", "abb", true},
		{"**", "x", true},
		{"x.*", "xy", false}, // only * is special
		{"x?", "xy", false},
		{"ü*", "über", true},
	} {
		if got := match(tc.pattern, tc.name); got != tc.want {
			t.Errorf("match(%q, %q) = %v; want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

// FuzzMatch holds match to a regular expression of the same pattern.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"a*b*c", "abbc"}, {"*x*", "yxy"}, {"a*a", "a"}, {"**ab", "aab"}, {"", ""}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if !utf8.ValidString(pattern) || !utf8.ValidString(name) {
			t.Skip()
		}
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re := regexp.MustCompile(`(?s)\A` + strings.Join(parts, ".*") + `\z`)
		if got, want := match(pattern, name), re.MatchString(name); got != want {
			t.Fatalf("match(%q, %q) = %v; the regexp says %v", pattern, name, got, want)
		}
	})
}

func TestRoomPermissions(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	type can struct{ join, publish bool }
	for _, tc := range []struct {
		name  string
		rooms any // the claim; nil: none
		want  map[string]can
	}{
		{"no rooms claim: every room", nil, map[string]can{"lobby": {true, true}, "x": {true, true}}},
		{"read-only", map[string]any{"join": []string{"*"}, "publish": []string{}},
			map[string]can{"lobby": {true, false}, "x": {true, false}}},
		{"read-only, publish missing", map[string]any{"join": []string{"*"}},
			map[string]can{"lobby": {true, false}}},
		{"empty claim: no room", map[string]any{}, map[string]can{"lobby": {false, false}}},
		{"null claim: no room", jsonNull{}, map[string]can{"lobby": {false, false}}},
		{"patterns", map[string]any{"join": []string{"team-*", "lobby"}, "publish": []string{"team-red", "*-ops", "lobby"}},
			map[string]can{
				"lobby":    {true, true},
				"team-red": {true, true},
				"team-blu": {true, false},
				"sre-ops":  {false, false}, // publishing needs join too
				"lobby2":   {false, false},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := claims()
			if tc.rooms != nil {
				c["rooms"] = tc.rooms
			}
			id, err := v.Verify(sign(t, jwt.SigningMethodHS256, secret, c, ""))
			if err != nil {
				t.Fatal(err)
			}
			for room, want := range tc.want {
				if got := (can{id.CanJoin(room), id.CanPublish(room)}); got != want {
					t.Errorf("%q: join, publish = %v; want %v (rooms %+v)", room, got, want, id.Rooms)
				}
			}
		})
	}
}

// jsonNull marshals as JSON null.
type jsonNull struct{}

func (jsonNull) MarshalJSON() ([]byte, error) { return []byte("null"), nil }
