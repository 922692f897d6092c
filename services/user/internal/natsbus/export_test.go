package natsbus

// WaitingForRoom reports whether a publisher waits for room (for tests).
func (b *Bus) WaitingForRoom() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiters.Waiting()
}
