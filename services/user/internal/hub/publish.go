package hub

// A client's chats: published on the bus, acknowledged when it answers.

import (
	"context"
	"errors"
	"time"

	"github.com/wschat/wschat/services/protocol"
	"github.com/wschat/wschat/services/user/internal/bus"
)

func (h *Hub) chat(c *client, in protocol.Inbound) {
	h.mu.Lock()
	if !c.admittedLocked(in) || !h.mayLocked(c, in, true) {
		h.mu.Unlock()
		return
	}
	if h.closing {
		c.sendErrorLocked(in, protocol.CodeShuttingDown, "this instance is shutting down; reconnect and send again")
		h.mu.Unlock()
		return
	}
	if _, ok := c.rooms[in.Room]; !ok && c.extended {
		c.sendErrorLocked(in, protocol.CodeNotJoined, "join room %q before sending to it", in.Room)
		h.mu.Unlock()
		return
	}
	mid := h.newID("m")
	h.pubs[mid] = pubWaiter{c: c, id: in.ID, room: in.Room, t0: time.Now()}
	h.mu.Unlock()
	h.m.ChatsIn.Inc()
	err := h.bus.Publish(mid, c.session, protocol.Message{Room: in.Room, ID: in.ID, From: c.nick, UID: c.member.ID, User: c.member.User, Text: in.Message})
	if err != nil {
		h.mu.Lock()
		delete(h.pubs, mid)
		code := protocol.CodeInternal
		if errors.Is(err, bus.ErrUnavailable) {
			code = protocol.CodeUnavailable
		}
		c.sendErrorLocked(in, code, "message not sent: %v", err)
		h.checkPubsDoneLocked()
		h.mu.Unlock()
	}
}

// Ack implements bus.Handler.
func (h *Hub) Ack(mid, room string, seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, ok := h.settlePubLocked(mid)
	if !ok {
		return
	}
	defer h.checkPubsDoneLocked()
	h.m.AckLatency.Observe(time.Since(w.t0).Seconds())
	if w.c.extended {
		w.c.peer.Send(protocol.AppendAck(make([]byte, 0, 48+len(w.id)+len(room)), w.id, room, seq))
	}
}

// Nack implements bus.Handler.
func (h *Hub) Nack(mid string, err *protocol.Error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, ok := h.settlePubLocked(mid)
	if !ok {
		return
	}
	defer h.checkPubsDoneLocked()
	w.c.sendErrorLocked(protocol.Inbound{ID: w.id, Room: w.room}, err.Code, "message refused: %s", err.Message)
}

// settlePubLocked removes the publish mid from those in flight; false when
// it was settled already (a duplicate answer).
func (h *Hub) settlePubLocked(mid string) (pubWaiter, bool) {
	w, ok := h.pubs[mid]
	delete(h.pubs, mid)
	return w, ok
}

func (h *Hub) checkPubsDoneLocked() {
	if h.closing && len(h.pubs) == 0 && h.pubsDone != nil {
		close(h.pubsDone)
		h.pubsDone = nil
	}
}

// Shutdown refuses new messages and waits (until ctx ends, and only while
// the bus can still answer) for the ones in flight to be acknowledged.
// The connections are closed after it (conn.Server.Shutdown), so that the
// acknowledgements reach their clients.
func (h *Hub) Shutdown(ctx context.Context) {
	h.mu.Lock()
	h.closing = true
	done := make(chan struct{})
	h.pubsDone = done
	h.checkPubsDoneLocked()
	h.mu.Unlock()
	dl, ok := ctx.Deadline()
	if !ok || !h.bus.Ready() {
		return
	}
	// Half the budget at most, so that closing the connections has its
	// share.
	wctx, cancel := context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
	defer cancel()
	select {
	case <-done:
	case <-wctx.Done():
		h.log.Warn("shutdown: messages still unacknowledged", "err", wctx.Err())
	}
}
