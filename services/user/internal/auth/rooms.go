package auth

import (
	"encoding/json"
	"errors"
	"strings"
)

// Rooms are the room patterns a token allows, from its "rooms" claim,
// {"join": [...], "publish": [...]}. A nil list allows every room (the
// token has no rooms claim); an empty one allows none (the claim lacks the
// list, or it is empty). In a pattern, "*" stands for any run of
// characters, none included; nothing else is special.
type Rooms struct {
	Join    []string `json:"join"`
	Publish []string `json:"publish"`
}

// CanJoin reports whether the identity may join room.
func (id *Identity) CanJoin(room string) bool { return allows(id.Rooms.Join, room) }

// CanPublish reports whether the identity may publish to room: that takes
// both join and publish permission.
func (id *Identity) CanPublish(room string) bool {
	return id.CanJoin(room) && allows(id.Rooms.Publish, room)
}

func allows(patterns []string, room string) bool {
	if patterns == nil {
		return true
	}
	for _, p := range patterns {
		if match(p, room) {
			return true
		}
	}
	return false
}

// match reports whether name matches pattern. Taking each piece between
// stars at its leftmost place is enough: a star matches anything, so an
// earlier place never leaves less room for the pieces after it.
func match(pattern, name string) bool {
	prefix, rest, starred := strings.Cut(pattern, "*")
	if !starred {
		return pattern == name
	}
	if !strings.HasPrefix(name, prefix) {
		return false
	}
	name = name[len(prefix):]
	for {
		piece, after, more := strings.Cut(rest, "*")
		if !more {
			return strings.HasSuffix(name, piece)
		}
		i := strings.Index(name, piece)
		if i < 0 {
			return false
		}
		name, rest = name[i+len(piece):], after
	}
}

// parseRooms reads the rooms claim; raw is nil when the token has none.
func parseRooms(raw json.RawMessage) (Rooms, error) {
	if raw == nil {
		return Rooms{}, nil
	}
	var r Rooms
	if err := json.Unmarshal(raw, &r); err != nil {
		return Rooms{}, errors.New(`token claim "rooms" must be {"join": [...], "publish": [...]} with room patterns as strings`)
	}
	// Present, but a list missing: none of that kind (nil would mean any).
	if r.Join == nil {
		r.Join = []string{}
	}
	if r.Publish == nil {
		r.Publish = []string{}
	}
	return r, nil
}
