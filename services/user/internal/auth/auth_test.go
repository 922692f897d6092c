package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	keys = newTestKeys()
	goleak.VerifyTestMain(m) // also: no JWKS refresh goroutine outlives its context
}

var secret = []byte("0123456789abcdef0123456789abcdef") // 32 bytes

type testKeys struct {
	rsa, rsa2 *rsa.PrivateKey
	ec, ec2   *ecdsa.PrivateKey
	ed, ed2   ed25519.PrivateKey
}

var keys testKeys

func newTestKeys() testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k testKeys
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec2, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.ed2, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return k
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pkix1(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pemBlock("PUBLIC KEY", der)
}

// allPEM holds the public keys of keys.rsa, keys.ec and keys.ed.
func allPEM(t testing.TB) []byte {
	return slices.Concat(pkix1(t, &keys.rsa.PublicKey), pkix1(t, &keys.ec.PublicKey), pkix1(t, keys.ed.Public()))
}

// claims are valid claims for alice, changed by key-value pairs; a nil
// value removes the claim.
func claims(kv ...any) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"sub": "alice", "name": "Alice", "exp": now.Add(time.Hour).Unix(), "iat": now.Add(-time.Minute).Unix()}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(c, kv[i].(string))
		} else {
			c[kv[i].(string)] = kv[i+1]
		}
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.MapClaims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// refused checks that v refuses token with code and a reason holding want,
// and that the error shows neither the token nor the secret.
func refused(t testing.TB, v *Verifier, token, code, want string) {
	t.Helper()
	id, err := v.Verify(token)
	if err == nil {
		t.Fatalf("accepted as %+v; want %s (%s)", id, code, want)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is no *Error", err, err)
	}
	if e.Code != code || !strings.Contains(e.Reason, want) {
		t.Errorf("refused with %s (%s); want %s (%s)", e.Code, e.Reason, code, want)
	}
	if len(token) > 2 && strings.Contains(err.Error(), token) || strings.Contains(err.Error(), string(secret)) {
		t.Errorf("error %q shows the token or the secret", err)
	}
}

func TestAcceptsEachKeyType(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret, PublicKeys: allPEM(t)})
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	iat := time.Now().Add(-time.Minute).Truncate(time.Second)
	c := claims("exp", exp.Unix(), "iat", iat.Unix())
	for _, tc := range []struct {
		m   jwt.SigningMethod
		key any
	}{
		{jwt.SigningMethodHS256, secret},
		{jwt.SigningMethodHS512, secret},
		{jwt.SigningMethodRS256, keys.rsa},
		{jwt.SigningMethodPS256, keys.rsa},
		{jwt.SigningMethodES256, keys.ec},
		{jwt.SigningMethodEdDSA, keys.ed},
	} {
		t.Run(tc.m.Alg(), func(t *testing.T) {
			id, err := v.Verify(sign(t, tc.m, tc.key, c, ""))
			if err != nil {
				t.Fatal(err)
			}
			want := Identity{User: "alice", Name: "Alice", Expires: exp, IssuedAt: iat}
			if id.User != want.User || id.Name != want.Name || !id.Expires.Equal(exp) || !id.IssuedAt.Equal(iat) ||
				id.Rooms.Join != nil || id.Rooms.Publish != nil {
				t.Errorf("identity %+v; want %+v", *id, want)
			}
		})
	}
}

func TestAcceptsPKCS1AndCertificate(t *testing.T) {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "idp"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(-time.Minute)} // expired: only its key counts
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &keys.rsa.PublicKey, keys.rsa)
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string][]byte{
		"RSA PUBLIC KEY": pemBlock("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&keys.rsa.PublicKey)),
		"CERTIFICATE":    pemBlock("CERTIFICATE", der),
	} {
		t.Run(name, func(t *testing.T) {
			v := newVerifier(t, Config{PublicKeys: text})
			if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "")); err != nil {
				t.Fatal(err)
			}
			refused(t, v, sign(t, jwt.SigningMethodRS256, keys.rsa2, claims(), ""), CodeTokenInvalid, "bad signature")
		})
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		c    jwt.MapClaims
		want string
	}{
		{Config{}, claims(), "Alice"},
		{Config{}, claims("name", nil), "alice"},
		{Config{}, claims("name", ""), "alice"},
		{Config{}, claims("name", json.RawMessage("null")), "alice"},
		{Config{NameClaim: "nick"}, claims("nick", "Bob"), "Bob"},
		{Config{NameClaim: "nick"}, claims(), "alice"}, // "name" is not the name claim
		{Config{MaxNameBytes: 64}, claims("name", strings.Repeat("n", 64)), strings.Repeat("n", 64)},
	} {
		tc.cfg.HMACSecret = secret
		id, err := newVerifier(t, tc.cfg).Verify(sign(t, jwt.SigningMethodHS256, secret, tc.c, ""))
		if err != nil {
			t.Errorf("%v: %v", tc.c, err)
		} else if id.Name != tc.want || id.User != "alice" {
			t.Errorf("%v: user %q name %q; want alice %q", tc.c, id.User, id.Name, tc.want)
		}
	}
}

func TestRefusals(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret, PublicKeys: allPEM(t)})
	strict := newVerifier(t, Config{HMACSecret: secret, Audience: "ws-user", Issuer: "idp"})
	pemOnly := newVerifier(t, Config{PublicKeys: pkix1(t, &keys.rsa.PublicKey)})
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, secret, c, "") }
	now := time.Now()
	good := hs(claims())
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims()).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	payload := strings.Split(good, ".")[1]

	for _, tc := range []struct {
		name       string
		v          *Verifier
		token      string
		code, want string
	}{
		{"expired", v, hs(claims("exp", now.Add(-time.Second).Unix())), CodeTokenExpired, "expired"},
		{"nbf in the future", v, hs(claims("nbf", now.Add(time.Minute).Unix())), CodeTokenInvalid, "not valid yet"},
		{"iat in the future", v, hs(claims("iat", now.Add(time.Minute).Unix())), CodeTokenInvalid, "not valid yet"},
		{"no exp", v, hs(claims("exp", nil)), CodeTokenInvalid, "no expiry"},
		{"no sub", v, hs(claims("sub", nil)), CodeTokenInvalid, "no sub"},
		{"empty sub", v, hs(claims("sub", "")), CodeTokenInvalid, "no sub"},
		{"sub not a string", v, hs(claims("sub", 7)), CodeTokenInvalid, "malformed"},
		{"over-long sub", v, hs(claims("sub", strings.Repeat("u", 129))), CodeTokenInvalid, "sub must be at most 128 bytes"},
		{"sub with a control character", v, hs(claims("sub", "al\nice")), CodeTokenInvalid, "sub must not contain control characters"},
		{"name with control characters", v, hs(claims("name", "Al\x1b[31mice")), CodeTokenInvalid, "name must not contain control characters"},
		{"over-long name", v, hs(claims("name", strings.Repeat("n", 33))), CodeTokenInvalid, "name must be at most 32 bytes"},
		{"no name, sub too long for one", v, hs(claims("name", nil, "sub", strings.Repeat("u", 40))), CodeTokenInvalid, `no "name" claim and its sub is no valid name`},
		{"name not a string", v, hs(claims("name", 5)), CodeTokenInvalid, `claim "name" must be a string`},
		{"rooms not an object", v, hs(claims("rooms", "all")), CodeTokenInvalid, `claim "rooms" must be`},
		{"room not a string", v, hs(claims("rooms", map[string]any{"join": []any{1}})), CodeTokenInvalid, `claim "rooms" must be`},
		{"HMAC, another secret", v, sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), claims(), ""), CodeTokenInvalid, "bad signature"},
		{"RSA, another key", v, sign(t, jwt.SigningMethodRS256, keys.rsa2, claims(), ""), CodeTokenInvalid, "bad signature"},
		{"RSA-PSS, another key", v, sign(t, jwt.SigningMethodPS256, keys.rsa2, claims(), ""), CodeTokenInvalid, "bad signature"},
		{"ECDSA, another key", v, sign(t, jwt.SigningMethodES256, keys.ec2, claims(), ""), CodeTokenInvalid, "bad signature"},
		{"Ed25519, another key", v, sign(t, jwt.SigningMethodEdDSA, keys.ed2, claims(), ""), CodeTokenInvalid, "bad signature"},
		{"payload changed", v, strings.Replace(good, payload, b64([]byte(`{"sub":"mallory","exp":9999999999}`)), 1), CodeTokenInvalid, "bad signature"},
		{"no key of the algorithm's type", pemOnly, sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), ""), CodeTokenInvalid, "algorithm not allowed"},
		{"curve without a key", v, sign(t, jwt.SigningMethodES384, mustEC(t, elliptic.P384()), claims(), ""), CodeTokenInvalid, "algorithm not allowed"},
		{"wrong audience", strict, hs(claims("aud", "other", "iss", "idp")), CodeTokenAudience, "another audience"},
		{"no audience", strict, hs(claims("iss", "idp")), CodeTokenAudience, "another audience"},
		{"wrong issuer", strict, hs(claims("aud", []string{"x", "ws-user"}, "iss", "evil")), CodeTokenAudience, "another issuer"},
		{"no issuer", strict, hs(claims("aud", "ws-user")), CodeTokenAudience, "another issuer"},
		{"expired, wrong audience", strict, hs(claims("aud", "other", "iss", "idp", "exp", now.Add(-time.Hour).Unix())), CodeTokenAudience, "another audience"},
		{"alg none", v, none, CodeTokenInvalid, "algorithm not allowed"},
		{"alg none, a signature", v, none + "c2ln", CodeTokenInvalid, "algorithm not allowed"},
		{"alg unknown", v, b64([]byte(`{"alg":"HS1","typ":"JWT"}`)) + "." + payload + ".c2ln", CodeTokenInvalid, "algorithm not allowed"},
		{"alg missing", v, b64([]byte(`{"typ":"JWT"}`)) + "." + payload + ".c2ln", CodeTokenInvalid, "algorithm not allowed"},
		{"empty", v, "", CodeTokenInvalid, "malformed"},
		{"one word", v, "hello", CodeTokenInvalid, "malformed"},
		{"dots", v, "..", CodeTokenInvalid, "malformed"},
		{"a.b.c", v, "a.b.c", CodeTokenInvalid, "malformed"},
		{"four parts", v, good + ".x", CodeTokenInvalid, "malformed"},
		{"header not JSON", v, b64([]byte("not json")) + "." + payload + ".c2ln", CodeTokenInvalid, "malformed"},
		{"claims not an object", v, strings.Replace(good, payload, b64([]byte(`[1,2]`)), 1), CodeTokenInvalid, "malformed"},
		{"binary", v, "\x00\xff\xfe.\x01.\x02", CodeTokenInvalid, "malformed"},
		{"signature not base64", v, good + "!", CodeTokenInvalid, "malformed"},
		// The same signature bytes spelt another way: HS256's 32 bytes leave
		// the last character 2 unused bits, which must be zero.
		{"non-canonical base64", v, good[:len(good)-1] + string(good[len(good)-1]^1), CodeTokenInvalid, "malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) { refused(t, tc.v, tc.token, tc.code, tc.want) })
	}
	if _, err := strict.Verify(hs(claims("aud", []string{"x", "ws-user"}, "iss", "idp"))); err != nil {
		t.Errorf("strict verifier refuses a good token: %v", err)
	}
}

func mustEC(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// An attacker who knows the RSA public key signs an HS256 token with its
// PEM text as the HMAC secret; a verifier that handed the PEM bytes (or the
// key) to HMAC would accept it.
func TestAlgorithmConfusion(t *testing.T) {
	rsaPEM := pkix1(t, &keys.rsa.PublicKey)
	forged := sign(t, jwt.SigningMethodHS256, rsaPEM, claims(), "")
	refused(t, newVerifier(t, Config{PublicKeys: rsaPEM}), forged, CodeTokenInvalid, "algorithm not allowed")
	refused(t, newVerifier(t, Config{HMACSecret: secret, PublicKeys: rsaPEM}), forged, CodeTokenInvalid, "bad signature")
}

// Each algorithm gets the keys of its type only.
func TestKeysByAlgorithm(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret, PublicKeys: allPEM(t)})
	for _, tc := range []struct {
		m    jwt.SigningMethod
		want any
	}{
		{jwt.SigningMethodHS256, secret},
		{jwt.SigningMethodHS384, secret},
		{jwt.SigningMethodRS256, &keys.rsa.PublicKey},
		{jwt.SigningMethodPS512, &keys.rsa.PublicKey},
		{jwt.SigningMethodES256, &keys.ec.PublicKey},
		{jwt.SigningMethodEdDSA, keys.ed.Public()},
	} {
		got, err := v.key(&jwt.Token{Method: tc.m, Header: map[string]any{"alg": tc.m.Alg()}})
		if err != nil {
			t.Errorf("%s: %v", tc.m.Alg(), err)
			continue
		}
		if set, ok := got.(jwt.VerificationKeySet); ok {
			if len(set.Keys) != 1 || !tc.want.(interface{ Equal(crypto.PublicKey) bool }).Equal(set.Keys[0]) {
				t.Errorf("%s: keys %v; want only %T", tc.m.Alg(), set.Keys, tc.want)
			}
		} else if b, ok := got.([]byte); !ok || string(b) != string(secret) {
			t.Errorf("%s: key %T; want the secret", tc.m.Alg(), got)
		}
	}
	if _, err := v.key(&jwt.Token{Method: jwt.SigningMethodES384, Header: map[string]any{}}); !errors.Is(err, errNoKey) {
		t.Errorf("ES384 without a P-384 key: %v; want errNoKey", err)
	}
	rsaOnly := newVerifier(t, Config{PublicKeys: pkix1(t, &keys.rsa.PublicKey)})
	if _, err := rsaOnly.key(&jwt.Token{Method: jwt.SigningMethodHS256, Header: map[string]any{}}); !errors.Is(err, errNoKey) {
		t.Errorf("HS256 without a secret: %v; want errNoKey", err)
	}
}

func TestLeeway(t *testing.T) {
	c := claims("exp", time.Now().Add(-5*time.Second).Unix(), "nbf", time.Now().Add(5*time.Second).Unix())
	token := sign(t, jwt.SigningMethodHS256, secret, c, "")
	if _, err := newVerifier(t, Config{HMACSecret: secret, Leeway: time.Minute}).Verify(token); err != nil {
		t.Errorf("with a leeway of 1 min: %v", err)
	}
	refused(t, newVerifier(t, Config{HMACSecret: secret}), token, CodeTokenInvalid, "not valid yet")
}

func TestNewRefuses(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, err := x509.MarshalECPrivateKey(keys.ec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no key", Config{Issuer: "idp"}, "no key"},
		{"short secret", Config{HMACSecret: []byte("s3cr3t-value")}, "at least 32 bytes, got 12"},
		{"not PEM", Config{PublicKeys: []byte("hello")}, "no PEM block"},
		{"a private key", Config{PublicKeys: pemBlock("EC PRIVATE KEY", ecPriv)}, "private key"},
		{"another block", Config{PublicKeys: pemBlock("CERTIFICATE REQUEST", []byte{1})}, `"CERTIFICATE REQUEST"`},
		{"a broken key", Config{PublicKeys: pemBlock("PUBLIC KEY", []byte{1, 2, 3})}, "block 1"},
		{"small RSA key", Config{PublicKeys: slices.Concat(pkix1(t, &keys.rsa.PublicKey), pkix1(t, &rsa1024.PublicKey))}, "block 2 (PUBLIC KEY): RSA key of 1024 bits"},
		{"P-224", Config{PublicKeys: pkix1(t, &mustEC(t, elliptic.P224()).PublicKey)}, "P-224"},
		{"text after PEM", Config{PublicKeys: append(pkix1(t, keys.ed.Public()), "junk"...)}, "not PEM"},
		{"negative leeway", Config{HMACSecret: secret, Leeway: -time.Second}, "leeway"},
		{"JWKS not http", Config{JWKSURL: "ftp://idp/jwks"}, "http or https"},
		{"JWKS relative", Config{JWKSURL: "/jwks"}, "http or https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(t.Context(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "auth: ") {
				t.Fatalf("New: %v, %v; want an error with %q", v, err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}
}

// jwksServer serves a JWK set that the test changes, and counts requests.
type jwksServer struct {
	*httptest.Server
	hits    atomic.Int64
	arrived chan struct{} // a value per request, when there is room

	mu     sync.Mutex
	status int
	body   []byte
	hold   chan struct{} // when not nil, requests wait until it is closed
}

func newJWKSServer(t testing.TB, jwks ...jwkset.JWKMarshal) *jwksServer {
	s := &jwksServer{status: http.StatusOK, arrived: make(chan struct{}, 1)}
	s.serve(t, jwks...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		select {
		case s.arrived <- struct{}{}:
		default:
		}
		s.mu.Lock()
		hold := s.hold
		s.mu.Unlock()
		if hold != nil {
			<-hold // as a hung endpoint: not even a closed connection ends it
		}
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// hang makes requests from now on hang until release is called, at the
// latest when the test ends (before s.Close, which waits for them).
func (s *jwksServer) hang(t testing.TB) (release func()) {
	hold := make(chan struct{})
	release = sync.OnceFunc(func() { close(hold) })
	t.Cleanup(release)
	s.mu.Lock()
	s.hold = hold
	s.mu.Unlock()
	return release
}

func (s *jwksServer) serve(t testing.TB, jwks ...jwkset.JWKMarshal) {
	body, err := json.Marshal(jwkset.JWKSMarshal{Keys: jwks})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body = body
	s.mu.Unlock()
}

func jwk(t testing.TB, kid string, pub crypto.PublicKey) jwkset.JWKMarshal {
	t.Helper()
	k, err := jwkset.NewJWKFromKey(pub, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	return k.Marshal()
}

func (s *jwksServer) wantHits(t testing.TB, want int64, when string) {
	t.Helper()
	if got := s.hits.Load(); got != want {
		t.Fatalf("%s: %d JWKS requests; want %d", when, got, want)
	}
}

func TestJWKSRotation(t *testing.T) {
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	v := newVerifier(t, Config{JWKSURL: srv.URL, HTTPClient: srv.Client()})
	srv.wantHits(t, 1, "after New")
	tokenA := sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "a")
	if _, err := v.Verify(tokenA); err != nil {
		t.Fatalf("token of key A: %v", err)
	}
	srv.wantHits(t, 1, "a known kid")

	srv.serve(t, jwk(t, "b", &keys.ec.PublicKey)) // A rotated out
	for i := range 2 {
		if _, err := v.Verify(sign(t, jwt.SigningMethodES256, keys.ec, claims(), "b")); err != nil {
			t.Fatalf("token %d of key B after the rotation: %v", i, err)
		}
		srv.wantHits(t, 2, "the new kid b, fetched at once and then known")
	}
	refused(t, v, sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "c"), CodeTokenInvalid, "unknown key id")
	srv.wantHits(t, 2, "another unknown kid within the rate limit")
	refused(t, v, tokenA, CodeTokenInvalid, "unknown key id")
	srv.wantHits(t, 2, "the rotated-out kid a")

	// Once the limit has passed, an unknown kid fetches again.
	v.jwks.mu.Lock()
	v.jwks.next = time.Now()
	v.jwks.mu.Unlock()
	srv.serve(t, jwk(t, "b", &keys.ec.PublicKey), jwk(t, "c", keys.ed.Public()))
	if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "c")); err != nil {
		t.Fatalf("token of key C after the limit: %v", err)
	}
	srv.wantHits(t, 3, "an unknown kid after the limit")
}

// The kid selects the key: another key of the set, even of the same type,
// does not verify a token naming a kid; without a kid, every key of the
// algorithm's type is tried.
func TestJWKSKidSelectsKey(t *testing.T) {
	noUse, enc := jwk(t, "e", keys.ed.Public()), jwk(t, "enc", &keys.ec.PublicKey)
	noUse.USE, enc.USE = "", jwkset.UseEnc
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey), jwk(t, "a2", &keys.rsa2.PublicKey), noUse, enc)
	v := newVerifier(t, Config{JWKSURL: srv.URL, HTTPClient: srv.Client()})
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, keys.rsa2, claims(), "a2")); err != nil {
		t.Errorf("kid a2, signed by a2: %v", err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodPS256, keys.rsa2, claims(), "")); err != nil {
		t.Errorf("no kid, signed by a2: %v", err)
	}
	refused(t, v, sign(t, jwt.SigningMethodRS256, keys.rsa2, claims(), "a"), CodeTokenInvalid, "bad signature")
	refused(t, v, sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "a"), CodeTokenInvalid, "no key for the token's algorithm")
	refused(t, v, sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "e"), CodeTokenInvalid, "no key for the token's algorithm")
	refused(t, v, sign(t, jwt.SigningMethodHS256, secret, claims(), "a"), CodeTokenInvalid, "algorithm not allowed")
	// A key without "use" signs; one for encryption does not.
	if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "e")); err != nil {
		t.Errorf("kid e, no use: %v", err)
	}
	refused(t, v, sign(t, jwt.SigningMethodES256, keys.ec, claims(), "enc"), CodeTokenInvalid, "no key for the token's algorithm")
	refused(t, v, sign(t, jwt.SigningMethodES256, keys.ec, claims(), ""), CodeTokenInvalid, "no key for the token's algorithm")
	srv.wantHits(t, 1, "known kids only")
}

func TestJWKSPeriodicRefresh(t *testing.T) {
	before := goleak.IgnoreCurrent()
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	v, err := New(ctx, Config{JWKSURL: srv.URL, HTTPClient: srv.Client(), JWKSRefresh: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv.serve(t, jwk(t, "b", &keys.ec.PublicKey))
	// Without a Verify, that is without an unknown kid to fetch for, the
	// new key arrives: read the keys fetched, which never fetches.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := v.jwks.cached.Storage().KeyRead(ctx, "b"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key b not fetched after 10 s (%d requests)", srv.hits.Load())
		}
	}
	if n := srv.hits.Load(); n < 2 {
		t.Fatalf("%d JWKS requests; want the start's and a refresh", n)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodES256, keys.ec, claims(), "b")); err != nil {
		t.Fatalf("token of key b: %v", err)
	}

	// The refresh stops with the context; the keys fetched stay in use.
	cancel()
	srv.Close()
	goleak.VerifyNone(t, before)
	if _, err := v.Verify(sign(t, jwt.SigningMethodES256, keys.ec, claims(), "b")); err != nil {
		t.Fatalf("token of key b after the context ended: %v", err)
	}
}

func TestJWKSStart(t *testing.T) {
	before := goleak.IgnoreCurrent()
	srv := newJWKSServer(t)
	srv.mu.Lock()
	srv.status = http.StatusInternalServerError
	srv.mu.Unlock()
	u := strings.Replace(srv.URL, "http://", "http://user:pa55word@", 1) + "/keys?token=s3cr3t"
	_, err := New(t.Context(), Config{JWKSURL: u, HTTPClient: srv.Client(), JWKSRefresh: time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), srv.URL+"/keys") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("New with a JWKS answering 500: %v; want an error naming %s/keys and the status", err, srv.URL)
	}
	if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "pa55word") {
		t.Errorf("error %q shows a secret of the URL", err)
	}

	srv.mu.Lock()
	srv.status = http.StatusOK
	srv.mu.Unlock()
	if _, err = New(t.Context(), Config{JWKSURL: srv.URL, HTTPClient: srv.Client()}); err == nil || !strings.Contains(err.Error(), "holds no supported key") {
		t.Errorf("New with an empty JWKS: %v", err)
	}

	addr := srv.URL
	srv.Close()
	if _, err = New(t.Context(), Config{JWKSURL: addr + "/?k=s3cr3t"}); err == nil || !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("New with the JWKS server gone: %v", err)
	}
	goleak.VerifyNone(t, before) // the failed News' refresh goroutines ended
}

// Many goroutines verify at once, HMAC and JWKS tokens, some with kids
// unknown: run with -race.
func TestConcurrentVerify(t *testing.T) {
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	v := newVerifier(t, Config{HMACSecret: secret, JWKSURL: srv.URL, HTTPClient: srv.Client()})
	good := []string{sign(t, jwt.SigningMethodHS256, secret, claims(), ""), sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "a")}
	bad := sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "zz")
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				if _, err := v.Verify(good[(g+i)%2]); err != nil {
					errs <- err
					return
				}
				if _, err := v.Verify(bad); err == nil {
					errs <- errors.New("unknown kid accepted")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The start's and one for the unknown kid, and one more per gap should
	// the loop outlast it (under -race, say).
	if n, most := srv.hits.Load(), 2+int64(time.Since(began)/unknownKIDGap); n < 2 || n > most {
		t.Errorf("%d JWKS requests; want 2 to %d (start, one unknown kid per %v)", n, most, unknownKIDGap)
	}
}

// While the endpoint hangs, a burst of tokens with made-up kids costs one
// request, and every one of them is refused within one on-demand fetch's
// limit: they share the fetch under way instead of queueing for a fetch
// each. Then, with the fetch over, the next is refused at once.
func TestJWKSHungEndpoint(t *testing.T) {
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	v := newVerifier(t, Config{JWKSURL: srv.URL, HTTPClient: srv.Client()}) // no client timeout: only onDemandFetch's
	srv.wantHits(t, 1, "after New")
	release := srv.hang(t)

	const n = 16
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), fmt.Sprintf("made-up-%d", i))
	}
	took := make([]time.Duration, n)
	errs := make([]error, n)
	start, done := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			began := time.Now()
			_, errs[i] = v.Verify(tokens[i])
			took[i] = time.Since(began)
		})
	}
	go func() { wg.Wait(); close(done) }()
	began := time.Now()
	close(start)
	// One fetch's limit and a generous margin, still short of two fetches.
	limit := onDemandFetch + 2*time.Second
	select {
	case <-done:
	case <-time.After(limit):
		release()
		<-done
		t.Fatalf("%d verifications of made-up kids still waiting %v after they began, with the endpoint hanging (%d JWKS requests); want all refused within %v",
			n, limit, srv.hits.Load(), limit)
	}
	all := time.Since(began)
	srv.wantHits(t, 2, fmt.Sprintf("%d made-up kids while the endpoint hangs", n))
	for i, err := range errs {
		if e, ok := errors.AsType[*Error](err); !ok || e.Reason != "unknown key id" {
			t.Errorf("token %d: %v; want refused for its unknown key id", i, err)
		}
	}
	longest := slices.Max(took)
	if longest > onDemandFetch+time.Second {
		t.Errorf("a verification took %v (all %v): longer than one on-demand fetch (%v)", longest, took, onDemandFetch)
	}
	if longest < onDemandFetch*9/10 {
		t.Errorf("the longest verification took %v: the hung fetch ended before its limit %v", longest, onDemandFetch)
	}
	t.Logf("%d made-up kids refused after at most %v (all within %v), 1 request", n, longest, all)

	// No fetch runs and none may start yet: refused at once, no request.
	began = time.Now()
	refused(t, v, sign(t, jwt.SigningMethodRS256, keys.rsa, claims(), "made-up-after"), CodeTokenInvalid, "unknown key id")
	if d := time.Since(began); d > 250*time.Millisecond {
		t.Errorf("a made-up kid right after the fetch was refused after %v; want at once", d)
	}
	srv.wantHits(t, 2, "a made-up kid right after the fetch")
}

// A made-up kid's fetch just before a real rotation keeps the new key out
// for unknownKIDGap only: the token of the new key is refused at once
// within it, and accepted when retried after it, well before the old 10 s.
func TestJWKSRotationAfterMadeUpKid(t *testing.T) {
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	v := newVerifier(t, Config{JWKSURL: srv.URL, HTTPClient: srv.Client()})
	refused(t, v, sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "made-up"), CodeTokenInvalid, "unknown key id")
	attacked := time.Now()
	srv.wantHits(t, 2, "the made-up kid")

	srv.serve(t, jwk(t, "a", &keys.rsa.PublicKey), jwk(t, "b", &keys.ec.PublicKey)) // the issuer rotates
	tokenB := sign(t, jwt.SigningMethodES256, keys.ec, claims(), "b")
	limit := unknownKIDGap + 2*time.Second
	for tries := 1; ; tries++ {
		began := time.Now()
		_, err := v.Verify(tokenB)
		if err == nil {
			t.Logf("token of the new key b accepted %v after the made-up kid's fetch, try %d", time.Since(attacked), tries)
			break
		}
		if d := time.Since(began); d > 250*time.Millisecond {
			t.Fatalf("try %d: refused after %v: %v; want refused at once while no fetch may start", tries, d, err)
		}
		if time.Since(attacked) > limit {
			t.Fatalf("token of the new key b still refused %v after the made-up kid's fetch (%d tries, %d JWKS requests): %v; want accepted after %v",
				time.Since(attacked), tries, srv.hits.Load(), err, unknownKIDGap)
		}
		time.Sleep(10 * time.Millisecond) // a client's retry
	}
	srv.wantHits(t, 3, "the new kid b, once the gap passed")
}

// Tokens of a new key that come while the fetch runs wait for it and pass
// with it: one request for all.
func TestJWKSNewKidBurstSharesTheFetch(t *testing.T) {
	srv := newJWKSServer(t, jwk(t, "a", &keys.rsa.PublicKey))
	v := newVerifier(t, Config{JWKSURL: srv.URL, HTTPClient: srv.Client()})
	<-srv.arrived // New's
	srv.serve(t, jwk(t, "a", &keys.rsa.PublicKey), jwk(t, "b", keys.ed.Public()))
	release := srv.hang(t)
	tokenB := sign(t, jwt.SigningMethodEdDSA, keys.ed, claims(), "b")
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range cap(errs) {
		wg.Go(func() {
			_, err := v.Verify(tokenB)
			errs <- err
		})
	}
	<-srv.arrived // the on-demand fetch is under way
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("token of the new key b: %v", err)
		}
	}
	srv.wantHits(t, 2, "a burst of the new kid b")
}

func TestMint(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret, Audience: "ws-user", Issuer: "dev"})
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	iat := time.Now().Truncate(time.Second)
	token, err := Mint(secret, Claims{User: "u1", Name: "Uno", Expires: exp, IssuedAt: iat, Audience: "ws-user", Issuer: "dev",
		Rooms: &Rooms{Join: nil, Publish: []string{}}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := v.Verify(token)
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "u1" || id.Name != "Uno" || !id.Expires.Equal(exp) || !id.IssuedAt.Equal(iat) ||
		!slices.Equal(id.Rooms.Join, []string{"*"}) || id.Rooms.Publish == nil || len(id.Rooms.Publish) != 0 {
		t.Errorf("identity %+v", *id)
	}
	if !id.CanJoin("any") || id.CanPublish("any") {
		t.Errorf("join any, publish none: CanJoin %v CanPublish %v", id.CanJoin("any"), id.CanPublish("any"))
	}

	token, err = Mint(secret, Claims{User: "u2"})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != `{"sub":"u2"}` {
		t.Errorf("payload %s; want only sub", payload)
	}
	if _, err := Mint(secret[:31], Claims{User: "u"}); err == nil {
		t.Error("Mint with a 31-byte secret")
	}
}
