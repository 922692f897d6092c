package bus_test

import (
	"testing"

	"github.com/wschat/wschat/services/user/internal/bus"
	"github.com/wschat/wschat/services/user/internal/bus/bustest"
)

func TestLocalIsABus(t *testing.T) {
	bustest.Run(t, bustest.Backend{New: func(_ *testing.T, _ string, h bus.Handler) bus.Bus {
		return bus.NewLocal(h, 10).WithDedupWindow(10)
	}})
}
