package load

// In-place scanning of server frames. encoding/json would allocate a value
// per frame; the generator only needs a few top-level fields, as raw bytes
// aliasing the frame. String values are returned without their quotes and
// with escapes left in place: the fields compared or parsed here (type,
// room, message of the generator's own chats, seq) never contain escapes.

// jsonIter walks the top-level members of one JSON object.
type jsonIter struct {
	b        []byte
	i        int
	key, val []byte
	bad      bool // the input was not a well-formed object
}

// reset starts walking b, which must hold a JSON object.
func (it *jsonIter) reset(b []byte) bool {
	it.b, it.i, it.key, it.val, it.bad = b, 0, nil, nil, false
	it.ws()
	if it.i >= len(b) || b[it.i] != '{' {
		it.bad = true
		return false
	}
	it.i++
	return true
}

func (it *jsonIter) ws() {
	for it.i < len(it.b) {
		switch it.b[it.i] {
		case ' ', '\t', '\r', '\n':
			it.i++
		default:
			return
		}
	}
}

// next advances to the next member and reports whether there is one.
func (it *jsonIter) next() bool {
	if it.bad {
		return false
	}
	it.ws()
	if it.i >= len(it.b) {
		it.bad = true
		return false
	}
	if it.b[it.i] == '}' {
		it.i++
		return false
	}
	if it.key != nil {
		if it.b[it.i] != ',' {
			it.bad = true
			return false
		}
		it.i++
		it.ws()
	}
	if it.i >= len(it.b) || it.b[it.i] != '"' {
		it.bad = true
		return false
	}
	end := it.str(it.i)
	if end < 0 {
		it.bad = true
		return false
	}
	it.key = it.b[it.i+1 : end]
	it.i = end + 1
	it.ws()
	if it.i >= len(it.b) || it.b[it.i] != ':' {
		it.bad = true
		return false
	}
	it.i++
	it.ws()
	if it.i >= len(it.b) {
		it.bad = true
		return false
	}
	switch c := it.b[it.i]; c {
	case '"':
		end := it.str(it.i)
		if end < 0 {
			it.bad = true
			return false
		}
		it.val = it.b[it.i+1 : end]
		it.i = end + 1
	case '{', '[':
		start := it.i
		if !it.skipNested() {
			it.bad = true
			return false
		}
		it.val = it.b[start:it.i]
	default:
		start := it.i
		for it.i < len(it.b) {
			c := it.b[it.i]
			if c == ',' || c == '}' || c == ' ' || c == '\t' || c == '\r' || c == '\n' {
				break
			}
			it.i++
		}
		if it.i == start {
			it.bad = true
			return false
		}
		it.val = it.b[start:it.i]
	}
	return true
}

// str returns the index of the closing quote of the string opening at i,
// or -1.
func (it *jsonIter) str(i int) int {
	for i++; i < len(it.b); i++ {
		switch it.b[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// skipNested moves past the object or array opening at it.i.
func (it *jsonIter) skipNested() bool {
	depth := 0
	for ; it.i < len(it.b); it.i++ {
		switch it.b[it.i] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				it.i++
				return true
			}
		case '"':
			end := it.str(it.i)
			if end < 0 {
				return false
			}
			it.i = end
		}
	}
	return false
}

// serverFrame holds the fields of a server frame the generator looks at.
type serverFrame struct {
	typ, room, message, id, code []byte
	seq                          uint64
	hasSeq                       bool
}

// scanFrame extracts the interesting top-level fields of frame into f.
func scanFrame(frame []byte, f *serverFrame) bool {
	*f = serverFrame{}
	var it jsonIter
	if !it.reset(frame) {
		return false
	}
	for it.next() {
		switch string(it.key) {
		case "type":
			f.typ = it.val
		case "room":
			f.room = it.val
		case "message":
			f.message = it.val
		case "id":
			f.id = it.val
		case "code":
			f.code = it.val
		case "seq":
			f.seq, f.hasSeq = parseUint(it.val)
		}
	}
	return !it.bad && f.typ != nil
}

// parseUint parses decimal digits; false on anything else or overflow.
func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// The text of a generator chat: "L<publisher>:<counter>:<scheduled ns>",
// optionally followed by a space and padding, for measured traffic, "P<anything>" for join probes. The scheduled send
// time travels with the message, so receivers measure latency from the
// schedule, not from when a late sender got around to sending.
const (
	textLoad  = 'L'
	textProbe = 'P'
)

func appendLoadText(dst []byte, pub, counter int, sched int64) []byte {
	dst = append(dst, textLoad)
	dst = appendInt(dst, int64(pub))
	dst = append(dst, ':')
	dst = appendInt(dst, int64(counter))
	dst = append(dst, ':')
	return appendInt(dst, sched)
}

func appendInt(dst []byte, v int64) []byte {
	if v < 0 {
		dst = append(dst, '-')
		v = -v
	}
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(dst, tmp[i:]...)
}

// parseLoadText reverses appendLoadText.
func parseLoadText(b []byte) (pub, counter int, sched int64, ok bool) {
	if len(b) < 6 || b[0] != textLoad {
		return 0, 0, 0, false
	}
	b = b[1:]
	// Padding (-size) follows a space.
	for j, c := range b {
		if c == ' ' {
			b = b[:j]
			break
		}
	}
	var f [3]uint64
	for k := range f {
		j := 0
		for j < len(b) && b[j] != ':' {
			j++
		}
		v, ok := parseUint(b[:j])
		if !ok || (k < 2) != (j < len(b)) {
			return 0, 0, 0, false
		}
		f[k] = v
		if j < len(b) {
			b = b[j+1:]
		}
	}
	if f[0] > 1<<31 || f[1] > 1<<31 || f[2] > 1<<62 {
		return 0, 0, 0, false
	}
	return int(f[0]), int(f[1]), int64(f[2]), true
}
