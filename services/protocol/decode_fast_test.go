package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

var inboundSeeds = []string{
	`{"type":"join-room","room":"R"}`,
	`{"type":"chat","room":"R","message":"hi"}`,
	`{"type":"hello","nick":"ann"}`,
	`{"type":"hello","nick":"ann","session":"3f9a0c1e","id":"h1"}`,
	`{"type":"join","room":"lobby","id":"j1","since":0}`,
	`{"type":"history","room":"lobby","before":100,"limit":-3}`,
	`{"type":"chat","room":"R","message":"say \"hi\""}`,
	`{"type":"chat","room":"R","message":"naïve ☃"}`,
	"{\"type\":\"chat\",\"message\":\"\xc3\"}",
	`{"type":"join","since":01}`,
	`{"type":"join","since":1e3}`,
	`{"type":"join","since":null}`,
	`{"Type":"chat"}`,
	`{"type":"chat","extra":1}`,
	`{"type":"chat"} `,
	`{"type":"join","since":5,"since":7}`,
	`{"limit":9223372036854775808}`,
	`{}`,
}

// The fast path must not be a second decoder of untrusted input: whatever
// it accepts, encoding/json accepts and reads the same way.
func FuzzDecodeFastMatchesEncodingJSON(f *testing.F) {
	for _, s := range inboundSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fast Inbound
		if !decodeFast(data, &fast) {
			return
		}
		if !utf8.Valid(data) {
			t.Fatalf("fast path accepted invalid UTF-8 %q, which Decode refuses", data)
		}
		var slow Inbound
		if err := json.Unmarshal(data, &slow); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", data, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast path read %+v, encoding/json %+v", data, fast, slow)
		}
	})
}

// What the seed and extended clients send takes the fast path.
func TestDecodeFastTakesClientFrames(t *testing.T) {
	for _, s := range inboundSeeds[:6] {
		var in Inbound
		if !decodeFast([]byte(s), &in) || in.Type == "" {
			t.Fatalf("%s did not take the fast path", s)
		}
	}
}
