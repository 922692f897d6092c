// Package browser drives the chat page in a real headless Chromium: two
// people in two separate browser contexts, on two different ws-user
// instances, chat; one instance is killed under one of them.
//
// Scenario is shared by the in-process system tests and the container
// tests, which differ only in how the page is reached and how an instance
// is killed.
package browser

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/draw"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Target is a running wschat as a browser reaches it.
type Target struct {
	// BaseURL serves the page, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Kill stops the ws-user instance with the given instance id.
	Kill func(instance string) error
	// Artifacts is the folder for screenshots ("" for t.TempDir()).
	Artifacts string
	// Refuse, when set, makes the front refuse (true) or accept (false)
	// new connections: with it, a tab stays disconnected long enough to
	// type while offline.
	Refuse func(bool)
}

// Chromium returns the browser binary, or "" when none is installed.
func Chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// tab is one person's browser context.
type tab struct {
	t       *testing.T
	name    string
	ctx     context.Context
	dialogs atomic.Int32
}

func (b *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %s: %v", b.name, what, err)
	}
}

// get runs one action that returns a value.
func get[T any](b *tab, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatalf("%s: %s: %v", b.name, what, err)
	}
	return v
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	return strings.TrimSpace(get(b, "read "+sel, chromedp.TextContent(chromedp.CSS(sel))))
}

func evalAs[T any](b *tab, expr string) T {
	b.t.Helper()
	return get(b, "evaluate "+expr, chromedp.Evaluate[T](expr))
}

// open loads the page as nick in room and returns the instance it landed on.
func (b *tab) open(base, nick, room string) string {
	b.t.Helper()
	b.do("open page", chromedp.Navigate(base+"/?nick="+nick+"&room="+room),
		chromedp.WaitVisible(chromedp.CSS(`#conn-state[data-state="connected"]`)),
		chromedp.WaitEnabled(chromedp.CSS(`#message-input`)))
	inst := b.text("#instance")
	if inst == "" {
		b.t.Fatalf("%s: connected but no instance shown", b.name)
	}
	return inst
}

func (b *tab) say(text string) {
	b.t.Helper()
	b.do("send "+text, chromedp.WaitEnabled(chromedp.CSS(`#message-input`)),
		chromedp.SendKeys(chromedp.CSS(`#message-input`), text+kb.Enter))
}

// messages returns the texts of the room's sequenced messages by seq, and
// fails when a seq repeats or is missing between the first and the last.
func (b *tab) messages() ([]string, []int) {
	b.t.Helper()
	type row struct {
		Seq  string `json:"seq"`
		Text string `json:"text"`
	}
	rows := evalAs[[]row](b, `[...document.querySelectorAll('#messages li.msg')].map(li => ({seq: li.dataset.seq, text: li.querySelector('.text').textContent}))`)
	var texts []string
	var seqs []int
	for _, r := range rows {
		n, _ := strconv.Atoi(r.Seq)
		seqs = append(seqs, n)
		texts = append(texts, r.Text)
	}
	return texts, seqs
}

// waitFor polls a page expression until it is true.
func (b *tab) waitFor(what, expr string, within time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if evalAs[bool](b, expr) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: timed out after %v waiting for %s", b.name, within, what)
		}
		time.Sleep(50 * time.Millisecond) // polling interval of a page condition
	}
}

func (b *tab) waitMessage(text string) {
	b.t.Helper()
	b.waitFor("message "+text, fmt.Sprintf(
		`[...document.querySelectorAll('#messages li.msg .text')].some(p => p.textContent === %s)`, strconv.Quote(text)), 20*time.Second)
}

func (b *tab) screenshot() image.Image {
	b.t.Helper()
	evalAs[bool](b, `(document.activeElement && document.activeElement.blur(), window.scrollTo(0, 0), true)`)
	buf := get(b, "screenshot", chromedp.CaptureScreenshot())
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		b.t.Fatalf("%s: screenshot: %v", b.name, err)
	}
	return img
}

// Scenario runs the whole browser story against target.
func Scenario(t *testing.T, target Target) {
	newTab := start(t)
	alice, bob := newTab("alice"), newTab("bob")
	const room = "demo"

	// Two people on two different instances (nginx spreads connections;
	// reload until bob lands elsewhere, a bounded number of times).
	ia := alice.open(target.BaseURL, "alice", room)
	ib := bob.open(target.BaseURL, "bob", room)
	for i := 0; ib == ia && i < 20; i++ {
		ib = bob.open(target.BaseURL, "bob", room)
	}
	if ib == ia {
		t.Fatalf("bob kept landing on alice's instance %s", ia)
	}
	t.Logf("alice on %s, bob on %s", ia, ib)
	alice.waitFor("bob present", `[...document.querySelectorAll('#members li')].some(li => li.textContent.includes('bob'))`, 10*time.Second)

	// Both directions.
	alice.say("hi bob, from " + ia)
	bob.waitMessage("hi bob, from " + ia)
	bob.say("hello alice, from " + ib)
	alice.waitMessage("hello alice, from " + ib)

	// Hostile text is text.
	for _, evil := range []string{`<img src=x onerror=alert(1)>`, `<script>alert(2)</script>`} {
		bob.say(evil)
		alice.waitMessage(evil)
	}
	for _, b := range []*tab{alice, bob} {
		injected := evalAs[bool](b, `!!document.querySelector('#messages img, #messages script')`)
		if injected || b.dialogs.Load() != 0 {
			t.Fatalf("%s: markup from a message was interpreted (elements %v, dialogs %d)", b.name, injected, b.dialogs.Load())
		}
	}

	// Kill alice's instance: she reconnects elsewhere through the load
	// balancer and sees what bob said meanwhile, in order, once.
	evalAs[bool](alice, `(() => { window.__states = []; const el = document.getElementById('conn-state');
		new MutationObserver(() => window.__states.push(el.dataset.state)).observe(el, {attributes: true}); return true })()`)
	if target.Refuse != nil {
		target.Refuse(true)
	}
	if err := target.Kill(ia); err != nil {
		t.Fatalf("kill %s: %v", ia, err)
	}
	meanwhile := []string{"while you were away 1", "while you were away 2", "while you were away 3"}
	for _, m := range meanwhile {
		bob.say(m)
		bob.waitMessage(m)
	}
	if target.Refuse != nil {
		// Typed while disconnected: shown as not yet sent, then sent after
		// the reconnect, never lost.
		alice.waitFor("reconnecting", `document.getElementById('conn-state').dataset.state === 'reconnecting'`, 20*time.Second)
		alice.say("typed while offline")
		alice.waitFor("an unsent message shown", `[...document.querySelectorAll('#messages li.outgoing')].some(li => li.textContent.includes('typed while offline'))`, 5*time.Second)
		target.Refuse(false)
		bob.waitMessage("typed while offline")
		meanwhile = append(meanwhile, "typed while offline")
	}
	alice.waitFor("reconnected", `window.__states.includes('reconnecting') && document.getElementById('conn-state').dataset.state === 'connected'`, 30*time.Second)
	if ia2 := alice.text("#instance"); ia2 == ia || ia2 == "" {
		t.Fatalf("alice reconnected to %q, want another instance than %s", ia2, ia)
	}
	for _, m := range meanwhile {
		alice.waitMessage(m)
	}
	texts, seqs := alice.messages()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("alice's messages are not contiguous: seqs %v", seqs)
		}
	}
	if !slices.Equal(texts[len(texts)-len(meanwhile):], meanwhile) {
		t.Fatalf("alice's last messages: %q", texts)
	}
	// The killed instance's members leave everyone's presence within a
	// bounded time (missed keepalives plus the relayer's grace period).
	bob.waitFor("alice's old connection to leave presence",
		`[...document.querySelectorAll('#members li')].filter(li => li.textContent.includes('alice')).length === 1`, 40*time.Second)
	ia2 := alice.text("#instance")
	alice.say("back, on " + ia2)
	bob.waitMessage("back, on " + ia2)

	// The picture shows the two tabs on two instances: should alice have
	// landed on bob's, bob reloads (the room's history comes back with
	// him) until the balancer puts him elsewhere, a bounded number of times.
	for i := 0; ib == ia2 && i < 20; i++ {
		ib = bob.open(target.BaseURL, "bob", room)
		bob.waitMessage("back, on " + ia2)
	}
	if ib == ia2 {
		t.Fatalf("bob kept landing on alice's new instance %s", ia2)
	}
	saveSideBySide(t, target.Artifacts, alice.screenshot(), bob.screenshot())
	carol := newTab("carol")
	beforeLogin(t, carol, target.BaseURL)
	phone(t, carol, target.BaseURL, room)
}

// beforeLogin checks the page before anyone logged in: the nickname form,
// and no connection badge or instance label, which would read like an
// error before the user did anything.
func beforeLogin(t *testing.T, b *tab, base string) {
	b.do("open the page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`#nick-input`)))
	if shown := evalAs[[]string](b, `['conn-state', 'instance'].filter(id => document.getElementById(id).offsetParent !== null)`); len(shown) > 0 {
		t.Fatalf("before login the page shows %q", shown)
	}
}

// phone checks the page on a phone-sized screen, driven by the keyboard.
func phone(t *testing.T, carol *tab, base, room string) {
	carol.do("phone viewport", chromedp.EmulateViewport(375, 667, chromedp.EmulateScale(2)))
	carol.open(base, "carol", room)
	if evalAs[bool](carol, `document.documentElement.scrollWidth > window.innerWidth`) {
		t.Fatalf("the page scrolls sideways on a 375 px wide screen")
	}
	if unlabelled := evalAs[[]string](carol, `[...document.querySelectorAll('input, button')].filter(e =>
		!(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id || e.outerHTML)`); len(unlabelled) > 0 {
		t.Fatalf("controls without a label: %q", unlabelled)
	}
	// Keyboard only: the message box has the focus after joining or can get
	// it by Tab, and Enter sends.
	carol.say("hello from a phone")
	carol.waitMessage("hello from a phone")
}

// saveSideBySide writes both tabs into one picture, and also to the path in
// WSCHAT_DEMO_PNG when set (how the README's picture is regenerated).
func saveSideBySide(t *testing.T, dir string, left, right image.Image) {
	if dir == "" {
		dir = t.TempDir()
	}
	lb, rb := left.Bounds(), right.Bounds()
	const gap = 8
	out := image.NewRGBA(image.Rect(0, 0, lb.Dx()+gap+rb.Dx(), max(lb.Dy(), rb.Dy())))
	draw.Draw(out, out.Bounds(), image.NewUniform(image.Black), image.Point{}, draw.Src)
	draw.Draw(out, lb.Sub(lb.Min), left, lb.Min, draw.Src)
	draw.Draw(out, rb.Sub(rb.Min).Add(image.Pt(lb.Dx()+gap, 0)), right, rb.Min, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, out); err != nil {
		t.Fatal(err)
	}
	paths := []string{filepath.Join(dir, "two-tabs.png")}
	if p := os.Getenv("WSCHAT_DEMO_PNG"); p != "" {
		paths = append(paths, p)
	}
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
}

// start runs a headless Chromium until the test ends and returns a maker
// of tabs, each its own browser context (a person); it skips the test when
// no Chromium is installed.
func start(t *testing.T) (newTab func(name string) *tab) {
	t.Helper()
	bin := Chromium()
	if bin == "" {
		t.Skip("no chromium installed (apt-get install chromium); .ci/run installs it")
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(bin),
		chromedp.NoSandbox, // root in a container or CI
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1024, 680),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browserCtx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return func(name string) *tab {
		ctx, _ := chromedp.NewContext(browserCtx, chromedp.WithNewBrowserContext())
		b := &tab{t: t, name: name, ctx: ctx}
		if err := chromedp.Listen(ctx, func(ev any) {
			if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
				b.dialogs.Add(1)
				go chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{})
			}
		}); err != nil {
			t.Fatalf("%s: listen: %v", name, err)
		}
		return b
	}
}

// TokenScenario: on a deployment that requires tokens, the page gets one
// through its hook (GET /auth/token) and connects with it; told that it
// expires soon, it fetches another and refreshes it in-band (refreshed
// reports when the server has seen that), and chats on, on the same
// connection. It returns the instance the page is on.
func TokenScenario(t *testing.T, base, nick, room string, refreshed func() bool) string {
	newTab := start(t)
	b := newTab(nick)
	inst := b.open(base, nick, room)
	b.say("signed in")
	b.waitMessage("signed in")
	// Shown as the token's user, which no nickname can be.
	author := evalAs[string](b, `[...document.querySelectorAll('#messages li.msg')].find(li => li.querySelector('.text').textContent === 'signed in').querySelector('.author').textContent`)
	if !strings.Contains(author, "@"+nick) {
		t.Fatalf("%s: the message's author shows %q, want the token's user @%s", nick, author, nick)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !refreshed() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no token refresh within 20s", nick)
		}
		time.Sleep(50 * time.Millisecond) // polling interval of the server's log
	}
	b.say("after the refresh")
	b.waitMessage("after the refresh")
	if got := b.text("#instance"); got != inst || !evalAs[bool](b, `document.querySelector('#conn-state').dataset.state === 'connected'`) {
		t.Fatalf("%s: on %q after the refresh, was on %q: the connection did not stay", nick, got, inst)
	}
	return inst
}

// ResendTarget is a running wschat for ResendScenario: the page reaches
// one instance first, whose relay link can be cut.
type ResendTarget struct {
	BaseURL string
	// Cut cuts the page's instance off the relay tier and returns once
	// the instance knows (it queues chats without acknowledging them).
	Cut func()
	// Drop drops the page's connection, and sends its next ones to
	// another instance.
	Drop func()
	// Heal restores the cut link, waits for it, and has a member on the
	// healed instance say marker in room once the instance has re-sent
	// what it held.
	Heal func(room, marker string)
}

// ResendScenario: chats typed while the page's instance is cut off from
// the relayer are sent there and never acknowledged; the page's connection
// drops, it reconnects to another instance and re-sends them (the same
// ids, its session); then the first instance's link heals and it re-sends
// them too. The page shows each message once, in one sequence.
func ResendScenario(t *testing.T, target ResendTarget) {
	x := start(t)("x")
	const room = "resend"
	first := x.open(target.BaseURL, "x", room)
	x.say("before the cut")
	x.waitMessage("before the cut")

	target.Cut()
	texts := []string{"during 1", "during 2", "during 3"}
	for _, text := range texts {
		x.say(text)
	}
	x.waitFor("the chats sent, unacknowledged", `document.querySelectorAll('#messages li.outgoing.sent').length === 3`, 20*time.Second)

	target.Drop()
	x.waitFor("a connection to another instance", fmt.Sprintf(
		`document.querySelector('#conn-state').dataset.state === 'connected' && document.querySelector('#instance').textContent !== %s`,
		strconv.Quote(first)), 30*time.Second)
	for _, text := range texts {
		x.waitMessage(text)
	}
	target.Heal(room, "marker")
	x.waitMessage("marker")

	got, seqs := x.messages()
	want := append(append([]string{"before the cut"}, texts...), "marker")
	if !slices.Equal(got, want) || !slices.Equal(seqs, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("the page shows %q at seqs %v, want %q at 1..5: a re-sent chat was sequenced twice", got, seqs, want)
	}
	if n := evalAs[int](x, `document.querySelectorAll('#messages li.outgoing').length`); n != 0 {
		t.Fatalf("%d messages still shown as outgoing", n)
	}
}
