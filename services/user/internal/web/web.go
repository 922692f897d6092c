// Package web serves the browser chat page that speaks the extended
// protocol (docs/protocol.md). The page is plain HTML, CSS and JavaScript
// embedded in the binary, so a ws-user image needs no other files.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// csp forbids inline script and style and every foreign origin, so text a
// user typed can never become code even if the page had a rendering bug.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"

// contentType is explicit because mime.TypeByExtension consults the host's
// mime files, which differ between a laptop and a scratch container.
func contentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".png":
		return "image/png"
	}
	return "application/octet-stream"
}

type file struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the page at "/" and its assets under "/static/". Anything
// else is 404, so a mistyped endpoint never answers with the page.
func Handler() http.Handler {
	files := map[string]file{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		files["/"+p] = file{body: body, ctype: contentType(p), etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		// The files are compiled in; failing to read them is a build defect.
		panic("web: reading embedded files: " + err.Error())
	}
	files["/"] = files["/static/index.html"]

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		f, ok := files[r.URL.Path]
		if !ok || strings.HasSuffix(r.URL.Path, "/index.html") {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// no-cache still lets the browser keep a copy; the ETag makes the
		// revalidation a 304 until a new build changes the file.
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	})
}
