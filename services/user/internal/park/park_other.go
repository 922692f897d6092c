//go:build !linux

package park

// Poller is a stand-in where there is none: New fails, and a nil *Poller
// parks nothing.
type Poller struct{}

// New returns ErrUnsupported.
func New() (*Poller, error) { return nil, ErrUnsupported }

// Park always fails.
func (p *Poller) Park(uintptr, *Waiter, func()) error { return ErrUnsupported }

// Wake finds nothing parked.
func (p *Poller) Wake(*Waiter) bool { return false }

// Parked is 0.
func (p *Poller) Parked() int { return 0 }

// Close does nothing.
func (p *Poller) Close() error { return nil }
