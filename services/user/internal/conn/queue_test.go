package conn

import "testing"

// A room's message finds the queue full at its limits (the member falls
// behind); other frames (acks, answers, presence) at twice them, and no
// further: memory per connection stays bounded.
func TestQueueLimitsOfRoomMessagesAndOtherFrames(t *testing.T) {
	q := queue{limit: 4, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
	for i := range 4 {
		if ok, _ := q.push([]byte("m"), false, true); !ok {
			t.Fatalf("room message %d refused", i)
		}
	}
	if ok, _ := q.push([]byte("m"), false, true); ok {
		t.Fatal("a fifth room message in a queue of 4")
	}
	for i := range 4 {
		if ok, _ := q.push([]byte("a"), false, false); !ok {
			t.Fatalf("ack %d refused behind 4 room messages", i)
		}
	}
	if ok, _ := q.push([]byte("a"), false, false); ok {
		t.Fatal("a ninth frame in a queue of 4")
	}
	q = queue{limit: 100, limitBytes: 100, wake: make(chan struct{}, 1)}
	for range 2 {
		if ok, _ := q.push(make([]byte, 40), false, true); !ok {
			t.Fatal("room message refused within the byte limit")
		}
	}
	if ok, _ := q.push(make([]byte, 40), false, true); ok {
		t.Fatal("a room message past the byte limit")
	}
	for range 3 {
		if ok, _ := q.push(make([]byte, 40), false, false); !ok {
			t.Fatal("an answer refused within twice the byte limit")
		}
	}
	if ok, _ := q.push(make([]byte, 1), false, false); ok {
		t.Fatal("a queue took 201 bytes with a limit of 100")
	}
}

// A lazy push neither wakes nor starts the writer; kick does.
func TestQueueLazyPushAndKick(t *testing.T) {
	q := queue{limit: 8, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
	if ok, start := q.push([]byte("p"), true, false); !ok || start {
		t.Fatalf("lazy push: ok %v, start %v; want queued, no writer", ok, start)
	}
	select {
	case <-q.wake:
		t.Fatal("a lazy push woke the writer")
	default:
	}
	if !q.kick() {
		t.Fatal("kick did not start the writer")
	}
	if q.kick() {
		t.Fatal("a second kick started a second writer")
	}
	if got := q.take(nil); len(got) != 1 {
		t.Fatalf("took %d frames, want 1", len(got))
	}
	if q.kick() {
		t.Fatal("kick with nothing queued")
	}
}

// Held frames count toward the queue's limits: past half of them a lazy
// push wakes the writer, so a burst of presence cannot overflow the queue
// of a connection that reads.
func TestQueueLazyPushPastHalfStartsTheWriter(t *testing.T) {
	q := queue{limit: 8, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
	for i := range 3 {
		if _, start := q.push([]byte("p"), true, false); start {
			t.Fatalf("lazy push %d started the writer", i)
		}
	}
	if ok, start := q.push([]byte("p"), true, false); !ok || !start {
		t.Fatalf("fourth lazy push of 8: ok %v, start %v; want the writer started", ok, start)
	}
	q = queue{limit: 100, limitBytes: 100, wake: make(chan struct{}, 1)}
	if _, start := q.push(make([]byte, 40), true, false); start {
		t.Fatal("a lazy push under half the bytes started the writer")
	}
	if _, start := q.push(make([]byte, 20), true, false); !start {
		t.Fatal("a lazy push past half the bytes did not start the writer")
	}
}

// A frame over the byte limit counts as half of it: it is taken, and the
// room's frames around it queue as usual, up to the limit.
func TestQueueByteLimit(t *testing.T) {
	q := queue{limit: 8, limitBytes: 100, wake: make(chan struct{}, 1)}
	if ok, _ := q.push(make([]byte, 10), false, true); !ok {
		t.Fatal("an empty queue refused a small frame")
	}
	if ok, _ := q.push(make([]byte, 150), false, true); !ok {
		t.Fatal("a frame over the byte limit was refused behind 10 bytes")
	}
	if ok, _ := q.push(make([]byte, 30), false, true); !ok {
		t.Fatal("a frame behind the large one was refused with 60 of 100 bytes counted")
	}
	if ok, _ := q.push(make([]byte, 20), false, true); ok {
		t.Fatal("a queue took 110 bytes with a limit of 100")
	}
	q.take(nil)
	for range 2 {
		if ok, _ := q.push(make([]byte, 40), false, true); !ok {
			t.Fatal("a drained queue refused a frame")
		}
	}
	if ok, _ := q.push(make([]byte, 30), false, true); ok {
		t.Fatal("a queue took 110 bytes with a limit of 100")
	}
}

// A claim to start the writer counts the writer at once, under the
// queue's lock: a close after it, and the connection's wait for its
// writers after the close, cannot miss a writer claimed before (one would
// outlive its connection's cleanup, and stay in the Server's set).
func TestClaimCountsTheWriter(t *testing.T) {
	for name, claim := range map[string]func(q *queue) bool{
		"push": func(q *queue) bool { _, start := q.push([]byte("a"), false, false); return start },
		"kick": func(q *queue) bool { q.push([]byte("p"), true, false); return q.kick() },
		"close with flush": func(q *queue) bool {
			q.push([]byte("p"), true, false)
			return q.close(true)
		},
	} {
		t.Run(name, func(t *testing.T) {
			q := queue{limit: 8, limitBytes: 1 << 10, wake: make(chan struct{}, 1)}
			if !claim(&q) {
				t.Fatal("no writer claimed")
			}
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("the claim did not count its writer: %v", r)
				}
			}()
			q.writers.Done() // the writer's own Done: panics if never added
		})
	}
}
