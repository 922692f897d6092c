package fault

import (
	"os"
	"testing"

	"github.com/wschat/wschat/integration/dockerstack"
)

func TestMain(m *testing.M) {
	os.Exit(dockerstack.Main(m, "fault"))
}
