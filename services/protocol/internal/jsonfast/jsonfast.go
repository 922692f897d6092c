// Package jsonfast reads the compact JSON that wschat's own encoders
// write, for the decoders' fast paths. Every method returns false on
// anything it does not handle (escapes, whitespace, fractions, overflow,
// invalid UTF-8), and the caller then falls back to encoding/json, which
// decides: a fast path may only accept what encoding/json reads the same
// way, which the callers' fuzz tests check.
package jsonfast

import "unicode/utf8"

// Parser reads compact JSON values from S, starting at I.
type Parser struct {
	S string
	I int
}

// Done reports whether the whole input was read.
func (p *Parser) Done() bool { return p.I == len(p.S) }

// Lit consumes c if it is next.
func (p *Parser) Lit(c byte) bool {
	if p.I < len(p.S) && p.S[p.I] == c {
		p.I++
		return true
	}
	return false
}

// Str reads a string without escapes or control characters, in valid
// UTF-8 (encoding/json would replace invalid bytes; the slow path does).
func (p *Parser) Str() (string, bool) {
	if !p.Lit('"') {
		return "", false
	}
	start := p.I
	ascii := true
	for ; p.I < len(p.S); p.I++ {
		switch c := p.S[p.I]; {
		case c == '"':
			v := p.S[start:p.I]
			p.I++
			if !ascii && !utf8.ValidString(v) {
				return "", false
			}
			return v, true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return "", false
}

// Uint reads a JSON integer that fits a uint64: no sign, no leading zero,
// no fraction or exponent.
func (p *Parser) Uint() (uint64, bool) {
	start := p.I
	var v uint64
	for ; p.I < len(p.S) && p.S[p.I] >= '0' && p.S[p.I] <= '9'; p.I++ {
		d := uint64(p.S[p.I] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	n := p.I - start
	if n == 0 || (n > 1 && p.S[start] == '0') {
		return 0, false
	}
	if p.I < len(p.S) && (p.S[p.I] == '.' || p.S[p.I] == 'e' || p.S[p.I] == 'E') {
		return 0, false
	}
	return v, true
}

// Int reads a JSON integer that fits an int64.
func (p *Parser) Int() (int64, bool) {
	neg := p.Lit('-')
	u, ok := p.Uint()
	if !ok || u > 1<<63-1 {
		return 0, false // -1<<63 itself goes the slow way
	}
	if neg {
		return -int64(u), true
	}
	return int64(u), true
}

// Object reads an object, calling value for each key to read its value;
// value returns false for a key it does not know or a value it cannot read.
func (p *Parser) Object(value func(key string) bool) bool {
	if !p.Lit('{') {
		return false
	}
	for first := true; ; first = false {
		if p.Lit('}') {
			return true
		}
		if !first && !p.Lit(',') {
			return false
		}
		key, ok := p.Str()
		if !ok || !p.Lit(':') || !value(key) {
			return false
		}
	}
}
