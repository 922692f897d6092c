package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string, hdr ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServesPageAndAssets(t *testing.T) {
	h := Handler()
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/", "text/html; charset=utf-8", `<script src="/static/app.js"`},
		{"/static/app.js", "text/javascript; charset=utf-8", "'use strict'"},
		{"/static/style.css", "text/css; charset=utf-8", ":focus-visible"},
		{"/static/icon.svg", "image/svg+xml", "<svg"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			res := get(t, h, http.MethodGet, tc.path)
			b := body(t, res)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200", res.StatusCode)
			}
			if got := res.Header.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if !strings.Contains(b, tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
			checkSecurityHeaders(t, res)
			if got := res.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", got)
			}
		})
	}
}

func checkSecurityHeaders(t *testing.T, res *http.Response) {
	t.Helper()
	want := map[string]string{
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
			"connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
	}
	for k, v := range want {
		if got := res.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func TestEveryEmbeddedFileIsServedWithAKnownType(t *testing.T) {
	h := Handler()
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "static/index.html" {
			return err
		}
		res := get(t, h, http.MethodGet, "/"+p)
		if res.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d", p, res.StatusCode)
		}
		if ct := res.Header.Get("Content-Type"); ct == "application/octet-stream" || ct == "" {
			t.Errorf("%s: no specific content type (%q); add its extension to contentType", p, ct)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUnknownPathsAreNotFound(t *testing.T) {
	h := Handler()
	for _, p := range []string{"/nope", "/static/", "/static", "/static/nope.js", "/index.html",
		"/static/index.html", "/static/../web.go", "/ws", "/static/app.js/x"} {
		res := get(t, h, http.MethodGet, p)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", p, res.StatusCode)
		}
		checkSecurityHeaders(t, res)
	}
}

func TestMethodsAndRevalidation(t *testing.T) {
	h := Handler()
	if res := get(t, h, http.MethodPost, "/"); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", res.StatusCode)
	}
	head := get(t, h, http.MethodHead, "/static/app.js")
	if head.StatusCode != http.StatusOK || body(t, head) != "" {
		t.Errorf("HEAD: status %d or a body", head.StatusCode)
	}
	etag := head.Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if res := get(t, h, http.MethodGet, "/static/app.js", "If-None-Match", etag); res.StatusCode != http.StatusNotModified {
		t.Errorf("conditional GET: status %d, want 304", res.StatusCode)
	}
}

// The CSP already refuses inline code; these checks keep the page from
// depending on something the CSP would silently break.
func TestPageHasNoInlineCode(t *testing.T) {
	page := body(t, get(t, Handler(), http.MethodGet, "/"))
	for _, m := range regexp.MustCompile(`(?is)<script\b([^>]*)>(.*?)</script>`).FindAllStringSubmatch(page, -1) {
		if strings.TrimSpace(m[2]) != "" {
			t.Errorf("inline script body: %q", m[0])
		}
		if !strings.Contains(m[1], "src=") {
			t.Errorf("script without src: %q", m[0])
		}
	}
	for name, re := range map[string]string{
		"inline event handler":   `(?i)<[^>]+\son[a-z]+\s*=`,
		"style attribute":        `(?i)<[^>]+\sstyle\s*=`,
		"style element":          `(?i)<style\b`,
		"javascript: URL":        `(?i)javascript:`,
		"external URL":           `(?i)(src|href)\s*=\s*["']?(https?:)?//`,
		"form submitting a page": `(?i)<form[^>]*\saction\s*=`,
	} {
		if loc := regexp.MustCompile(re).FindStringIndex(page); loc != nil {
			t.Errorf("%s in index.html: %q", name, page[loc[0]:min(loc[1]+20, len(page))])
		}
	}
}

// The page and its script must keep the element ids the browser tests use.
func TestStableHooks(t *testing.T) {
	h := Handler()
	page := body(t, get(t, h, http.MethodGet, "/"))
	for _, id := range []string{"instance", "conn-state", "messages", "message-input", "nick-input", "room-input"} {
		if !strings.Contains(page, `id="`+id+`"`) {
			t.Errorf("index.html lacks id %q", id)
		}
	}
	js := body(t, get(t, h, http.MethodGet, "/static/app.js"))
	for _, want := range []string{"'msg'", "dataset.seq", "'/ws'", "nick", "room"} {
		if !strings.Contains(js, want) {
			t.Errorf("app.js lacks %s", want)
		}
	}
}

// Data from the network must only reach the page as text.
func TestScriptNeverParsesHTML(t *testing.T) {
	js := body(t, get(t, Handler(), http.MethodGet, "/static/app.js"))
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
		"new Function", "createContextualFragment", "http://", "https://"} {
		if strings.Contains(js, bad) {
			t.Errorf("app.js uses %s", bad)
		}
	}
}
