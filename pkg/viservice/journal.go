package viservice

// Restart-safe persistence of a port's filter table and attachments at O(1)
// per change: a snapshot (path, JSON, replaced atomically and fsynced) and a
// journal (path + ".journal", one JSON record per line, appended with one
// write(2) per change and no fsync). The journal is folded into a new
// snapshot when it grows past twice the table (compaction), so a change
// costs O(1) amortized whatever the table's size.
//
// Durability: an appended record is in the kernel once write(2) returns, so
// it survives the agent's crash or kill; it is not fsynced, so a kernel crash
// or power loss may lose the last changes — and with them the node's BPF
// pins and every pod, which is what the state describes. A record torn by a
// crash mid-append (the last line, incomplete) is ignored on restart.
//
// Generations: the snapshot carries Gen and the journal starts with a header
// line {"gen":N}. Compaction writes the snapshot with Gen+1 before it
// truncates the journal and writes the new header, so a journal whose gen is
// below the snapshot's was already folded in (a crash between the two
// steps) and is skipped.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/kube-efvi/kube-efvi/internal/atomicfile"
	"github.com/kube-efvi/kube-efvi/pkg/filter"
)

// journalRecord is one change. Exactly one of the fields besides Gen is set
// (a header line has only Gen).
type journalRecord struct {
	Gen         *uint64          `json:"gen,omitempty"`
	Add         *filter.Entry    `json:"add,omitempty"`
	Del         filter.Cookie    `json:"del,omitempty"`
	Attach      string           `json:"attach,omitempty"`
	Filters     []AttachedFilter `json:"filters,omitempty"`
	Detach      string           `json:"detach,omitempty"`
	RemoveOwner *filter.VIID     `json:"removeOwner,omitempty"`
}

func (p *Port) journalPath() string { return p.statePath + ".journal" }

// logLocked appends one record (O(1)); an error is kept for the caller's
// persistLocked.
func (p *Port) logLocked(r journalRecord) {
	if p.statePath == "" {
		return
	}
	b, err := json.Marshal(r)
	if err == nil {
		err = appendLine(p.journalPath(), b)
	}
	if err != nil {
		p.logErr = errors.Join(p.logErr, fmt.Errorf("filter journal %s: %w", p.journalPath(), err))
		return
	}
	p.journalLen++
}

func appendLine(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(append(b, '\n'))
	return errors.Join(werr, f.Close())
}

// persistLocked reports the journal errors since the last call and
// compacts when the journal has grown past twice the table.
func (p *Port) persistLocked() error {
	if p.statePath == "" {
		return nil
	}
	err := p.logErr
	p.logErr = nil
	if err != nil || p.journalLen > max(64, 2*p.table.Len()) {
		// A failed append is repaired by a snapshot of what is in memory.
		if cerr := p.compactLocked(); cerr != nil {
			return errors.Join(err, cerr)
		}
		return nil
	}
	return nil
}

// compactLocked writes a snapshot of the table and attachments with the next
// generation and starts an empty journal of that generation.
func (p *Port) compactLocked() error {
	gen := p.gen + 1
	b, err := json.Marshal(portState{Gen: gen, Filters: p.table.Snapshot(), Attachments: p.attachments})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(p.statePath, b, 0o600, true); err != nil {
		return fmt.Errorf("filter state snapshot: %w", err)
	}
	h, _ := json.Marshal(journalRecord{Gen: &gen})
	if err := atomicfile.Write(p.journalPath(), append(h, '\n'), 0o600, false); err != nil {
		return fmt.Errorf("filter journal %s: %w", p.journalPath(), err)
	}
	p.gen, p.journalLen = gen, 0
	return nil
}

// loadState reads the snapshot and replays the journal on it.
func loadState(path string) (portState, error) {
	var st portState
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return st, fmt.Errorf("read filter state: %w", err)
	default:
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("filter state %s is corrupt (%v): move it and %s.journal away to start with an empty table", path, err, path)
		}
	}
	j, err := os.ReadFile(path + ".journal")
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read filter journal: %w", err)
	}
	if err := replay(&st, j); err != nil {
		return st, fmt.Errorf("filter journal %s.journal: %w (move it away to restart from the snapshot)", path, err)
	}
	return st, nil
}

// replay applies journal records to st. The last line may be torn (a crash
// mid-append) and is ignored; any other bad line is an error.
func replay(st *portState, j []byte) error {
	byCookie := map[filter.Cookie]filter.Entry{}
	for _, e := range st.Filters {
		byCookie[e.Cookie] = e
	}
	if st.Attachments == nil {
		st.Attachments = map[string][]AttachedFilter{}
	}
	sc := bufio.NewScanner(bytes.NewReader(j))
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	line, skip := 0, false
	complete := bytes.HasSuffix(j, []byte("\n"))
	var lines [][]byte
	for sc.Scan() {
		lines = append(lines, slices.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		return err
	}
	for i, l := range lines {
		line = i + 1
		var r journalRecord
		if err := json.Unmarshal(l, &r); err != nil {
			if i == len(lines)-1 && !complete {
				break // torn by a crash mid-append
			}
			return fmt.Errorf("line %d: %v", line, err)
		}
		switch {
		case r.Gen != nil:
			if line != 1 {
				return fmt.Errorf("line %d: generation header not on the first line", line)
			}
			skip = *r.Gen < st.Gen // already folded into the snapshot
		case skip:
		case r.Add != nil:
			byCookie[r.Add.Cookie] = *r.Add
		case r.Del != 0:
			delete(byCookie, r.Del)
		case r.Attach != "":
			st.Attachments[r.Attach] = r.Filters
		case r.Detach != "":
			delete(st.Attachments, r.Detach)
		case r.RemoveOwner != nil:
			o := *r.RemoveOwner
			for c, e := range byCookie {
				if e.Owner == o {
					delete(byCookie, c)
				}
			}
			for k, att := range st.Attachments {
				att = slices.DeleteFunc(att, func(d AttachedFilter) bool { return d.Slot == uint32(o) })
				if len(att) == 0 {
					delete(st.Attachments, k)
				} else {
					st.Attachments[k] = att
				}
			}
		default:
			return fmt.Errorf("line %d: empty record", line)
		}
	}
	st.Filters = st.Filters[:0]
	for _, e := range byCookie {
		st.Filters = append(st.Filters, e)
	}
	slices.SortFunc(st.Filters, func(a, b filter.Entry) int {
		switch {
		case a.Cookie < b.Cookie:
			return -1
		case a.Cookie > b.Cookie:
			return 1
		}
		return 0
	})
	return nil
}
