package containers

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/wschat/wschat/integration/browser"
	"github.com/wschat/wschat/integration/dockerstack"
)

// The chat page in a real Chromium through nginx: two people on two
// replicas chat; one replica is killed under one of them, who reconnects
// through nginx to a survivor and misses nothing. Screenshots of both tabs
// go to $WSCHAT_ARTIFACTS (default: a temporary folder), and to
// $WSCHAT_DEMO_PNG when set (make demo-screenshot).
func TestBrowserThroughNginx(t *testing.T) {
	dockerstack.Need(t)
	s := dockerstack.New(t, 3)
	browser.Scenario(t, browser.Target{
		BaseURL: s.HTTPURL,
		Kill: func(instance string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s.Kill(ctx, s.User(instance))
			return nil
		},
		Artifacts: os.Getenv("WSCHAT_ARTIFACTS"),
	})
}
