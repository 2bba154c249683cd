package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
)

// span is one element of a conflist's "plugins" array, by byte offsets.
type span struct {
	start, end int
	typ        string
	raw        []byte
}

// chain is the parsed "plugins" array of a conflist.
type chain struct {
	open    int // offset just after '['
	plugins []span
}

// parseChain finds the "plugins" array of a CNI conflist and each plugin's
// byte range, so edits can splice bytes and leave the rest of the file (its
// formatting included) untouched.
func parseChain(b []byte) (*chain, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object: a CNI conflist is an object with \"name\", \"cniVersion\" and \"plugins\"")
	}
	var c *chain
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		key, _ := kt.(string)
		if key != "plugins" || c != nil {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fmt.Errorf("not JSON: field %q: %w", key, err)
			}
			continue
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not JSON: field \"plugins\": %w", err)
		}
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return nil, errors.New("\"plugins\" is not an array")
		}
		c = &chain{open: int(dec.InputOffset())}
		for i := 0; dec.More(); i++ {
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("not JSON: plugins[%d]: %w", i, err)
			}
			end := int(dec.InputOffset())
			start := end - len(raw)
			if start < 0 || !bytes.Equal(b[start:end], raw) {
				return nil, fmt.Errorf("plugins[%d]: cannot locate its bytes in the file", i)
			}
			var p struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(raw, &p); err != nil {
				return nil, fmt.Errorf("plugins[%d] is not an object with a \"type\": %w", i, err)
			}
			if p.Type == "" {
				return nil, fmt.Errorf("plugins[%d] has no \"type\"", i)
			}
			c.plugins = append(c.plugins, span{start: start, end: end, typ: p.Type, raw: raw})
		}
		if _, err := dec.Token(); err != nil { // ']'
			return nil, fmt.Errorf("not JSON: plugins: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not JSON: trailing data after the top-level object")
	}
	if c == nil {
		return nil, errors.New("no \"plugins\" array: this is a single-plugin network config, not a conflist; chained plugins need a .conflist")
	}
	return c, nil
}

// sameJSON reports whether a and b decode to equal values.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// InsertPlugin appends entry (a JSON object whose "type" is typ) to the
// conflist's plugins, after the last one, in the file's own indentation.
// If an equal entry is already there, b is returned unchanged; other
// entries of typ are replaced.
func InsertPlugin(b, entry []byte, typ string) ([]byte, bool, error) {
	c, err := parseChain(b)
	if err != nil {
		return nil, false, err
	}
	var mine []span
	for _, p := range c.plugins {
		if p.typ == typ {
			mine = append(mine, p)
		}
	}
	if len(mine) == 1 && sameJSON(mine[0].raw, entry) {
		return b, false, nil
	}
	if len(mine) > 0 {
		if b, _, err = RemovePlugin(b, typ); err != nil {
			return nil, false, err
		}
		if c, err = parseChain(b); err != nil {
			return nil, false, err
		}
	}
	var out []byte
	if n := len(c.plugins); n == 0 {
		out = splice(b, c.open, c.open, entry)
	} else {
		// Reuse the whitespace before the last element (e.g. "\n    ").
		last := c.plugins[n-1]
		prev := c.open
		if n > 1 {
			prev = c.plugins[n-2].end
		}
		ws := bytes.TrimLeft(b[prev:last.start], ",")
		ins := append(append([]byte{','}, ws...), entry...)
		out = splice(b, last.end, last.end, ins)
	}
	if !json.Valid(out) {
		return nil, false, errors.New("internal error: the edited conflist is not valid JSON; file left unchanged")
	}
	return out, true, nil
}

// RemovePlugin removes every plugin of typ, each with the separator
// InsertPlugin added, so remove(insert(f)) == f byte for byte.
func RemovePlugin(b []byte, typ string) ([]byte, bool, error) {
	changed := false
	for {
		c, err := parseChain(b)
		if err != nil {
			return nil, false, err
		}
		i := -1
		for j, p := range c.plugins {
			if p.typ == typ {
				i = j
				break
			}
		}
		if i < 0 {
			return b, changed, nil
		}
		p := c.plugins[i]
		switch {
		case i > 0: // ",<ws><entry>" after the previous element
			b = splice(b, c.plugins[i-1].end, p.end, nil)
		case len(c.plugins) > 1: // "<entry>,<ws>" before the next one
			b = splice(b, p.start, c.plugins[1].start, nil)
		default:
			b = splice(b, p.start, p.end, nil)
		}
		changed = true
	}
}

func splice(b []byte, from, to int, ins []byte) []byte {
	out := make([]byte, 0, len(b)-(to-from)+len(ins))
	out = append(out, b[:from]...)
	out = append(out, ins...)
	return append(out, b[to:]...)
}
