// Command tlogcheck checks a Sentinel inclusion or consistency proof, and the signed checkpoints it
// rests on, with golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog: the Go reference
// implementations of C2SP signed notes and RFC 6962 proofs, so that nothing of Sentinel's own
// verifier is trusted.
//
// Usage:
//
//	tlogcheck -vkey 'origin+hash+base64key' proof.json
//	tlogcheck -vkey 'origin+hash+base64key' -tiles URL [-leaf N -record FILE]
//
// proof.json is what `sentinel audit prove --json` or `sentinel audit consistency --json` prints:
//
//	{"origin", "leaf_index", "tree_size", "record" (base64), "proof" ([base64]), "checkpoint" (note)}
//	{"origin", "old_size", "new_size", "old_checkpoint", "new_checkpoint", "proof" ([base64])}
//
// With -tiles, URL is a C2SP tlog-tiles log (Sentinel's admin port serves one at /tlog/<instance>):
// it reads URL/checkpoint, opens it, and reads the hash tiles through tlog.TileHashReader, which checks
// every tile against the signed root; the tree hash must be the root, and with -leaf and -record the
// record must be leaf N of the tree (a proof made from the served tiles). It prints "ok SIZE".
//
// It prints "ok" and exits 0 when every signature, checkpoint and proof holds; otherwise it prints
// why on stderr and exits 1 (2 for a usage error or an unreadable file).
//
// Build offline, from Debian's golang-golang-x-mod-dev, in GOPATH mode:
//
//	GO111MODULE=off GOPROXY=off GOPATH=$PWD:/usr/share/gocode go build
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// proofFile holds both shapes; pointers tell a missing field from a zero one. Fields that other
// versions of Sentinel may add are ignored.
type proofFile struct {
	Origin string    `json:"origin"`
	Proof  *[]string `json:"proof"`

	LeafIndex  *int64  `json:"leaf_index"`
	TreeSize   *int64  `json:"tree_size"`
	Record     *string `json:"record"`
	Checkpoint *string `json:"checkpoint"`

	OldSize       *int64  `json:"old_size"`
	NewSize       *int64  `json:"new_size"`
	OldCheckpoint *string `json:"old_checkpoint"`
	NewCheckpoint *string `json:"new_checkpoint"`
}

// checkpoint is the body of a C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint). tlog.ParseTree is
// not used: it reads the older go.sum tree-note header, not an origin line.
type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func main() {
	vkey := flag.String("vkey", "", "verifier key of the log, `name+hash+base64key`")
	tiles := flag.String("tiles", "", "read the log from this C2SP tlog-tiles `URL` instead of a proof file")
	leaf := flag.Int64("leaf", -1, "with -tiles and -record: the record's leaf `index`")
	record := flag.String("record", "", "with -tiles and -leaf: a `file` with the record's stored bytes")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: tlogcheck -vkey 'origin+hash+base64key' proof.json")
		fmt.Fprintln(os.Stderr, "       tlogcheck -vkey 'origin+hash+base64key' -tiles URL [-leaf N -record FILE]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *tiles != "" {
		if *vkey == "" || flag.NArg() != 0 || (*leaf < 0) != (*record == "") {
			flag.Usage()
			os.Exit(2)
		}
		size, err := checkTiles(*tiles, *vkey, *leaf, *record)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tlogcheck:", err)
			os.Exit(1)
		}
		fmt.Println("ok", size)
		return
	}
	if *vkey == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	data, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(2)
	}
	if err := check(data, *vkey); err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(1)
	}
	fmt.Println("ok")
}

func check(data []byte, vkey string) error {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	var f proofFile
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("proof file: %w", err)
	}
	if f.Origin == "" {
		return errors.New("proof file: no origin")
	}
	// The key that signs a log's checkpoints is named after the log (c2sp.org/tlog-checkpoint).
	if verifier.Name() != f.Origin {
		return fmt.Errorf("verifier key is named %q, not after the origin %q", verifier.Name(), f.Origin)
	}
	if f.Proof == nil {
		return errors.New("proof file: no proof")
	}
	proof, err := hashes(*f.Proof)
	if err != nil {
		return err
	}
	verifiers := note.VerifierList(verifier)
	switch {
	case f.Checkpoint != nil && f.NewCheckpoint == nil:
		return checkInclusion(&f, proof, verifiers)
	case f.NewCheckpoint != nil && f.Checkpoint == nil:
		return checkConsistency(&f, proof, verifiers)
	}
	return errors.New("proof file: neither an inclusion proof (checkpoint) nor a consistency proof (new_checkpoint)")
}

func checkInclusion(f *proofFile, proof []tlog.Hash, verifiers note.Verifiers) error {
	if f.LeafIndex == nil || f.TreeSize == nil || f.Record == nil {
		return errors.New("inclusion proof: needs leaf_index, tree_size and record")
	}
	c, err := openCheckpoint(*f.Checkpoint, f.Origin, verifiers)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if c.size != *f.TreeSize {
		return fmt.Errorf("checkpoint is of size %d, the proof of size %d", c.size, *f.TreeSize)
	}
	record, err := base64.StdEncoding.Strict().DecodeString(*f.Record)
	if err != nil {
		return fmt.Errorf("record: %w", err)
	}
	if err := tlog.CheckRecord(proof, c.size, c.root, *f.LeafIndex, tlog.RecordHash(record)); err != nil {
		return fmt.Errorf("record %d is not in the tree of size %d: %w", *f.LeafIndex, c.size, err)
	}
	return nil
}

func checkConsistency(f *proofFile, proof []tlog.Hash, verifiers note.Verifiers) error {
	if f.OldSize == nil || f.NewSize == nil || f.OldCheckpoint == nil {
		return errors.New("consistency proof: needs old_size, new_size and old_checkpoint")
	}
	old, err := openCheckpoint(*f.OldCheckpoint, f.Origin, verifiers)
	if err != nil {
		return fmt.Errorf("old checkpoint: %w", err)
	}
	cur, err := openCheckpoint(*f.NewCheckpoint, f.Origin, verifiers)
	if err != nil {
		return fmt.Errorf("new checkpoint: %w", err)
	}
	if old.size != *f.OldSize || cur.size != *f.NewSize {
		return fmt.Errorf("checkpoints are of sizes %d and %d, the proof from %d to %d",
			old.size, cur.size, *f.OldSize, *f.NewSize)
	}
	if err := tlog.CheckTree(proof, cur.size, cur.root, old.size, old.root); err != nil {
		return fmt.Errorf("the tree of size %d does not extend the tree of size %d: %w", cur.size, old.size, err)
	}
	return nil
}

// openCheckpoint verifies the signed note and parses its text as a checkpoint of origin.
func openCheckpoint(msg, origin string, verifiers note.Verifiers) (checkpoint, error) {
	n, err := note.Open([]byte(msg), verifiers)
	if err != nil {
		return checkpoint{}, err
	}
	signed := false
	for _, s := range n.Sigs {
		signed = signed || s.Name == origin
	}
	if !signed {
		return checkpoint{}, fmt.Errorf("not signed by a key named %q", origin)
	}
	// note.Open leaves Text ending in a newline, so the last element is empty.
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		return checkpoint{}, errors.New("needs an origin, a size and a root hash, each on a line")
	}
	if lines[0] != origin {
		return checkpoint{}, fmt.Errorf("origin is %q, not %q", lines[0], origin)
	}
	for _, ext := range lines[3 : len(lines)-1] {
		if ext == "" {
			return checkpoint{}, errors.New("empty extension line")
		}
	}
	size, err := parseSize(lines[1])
	if err != nil {
		return checkpoint{}, err
	}
	root, err := hash(lines[2])
	if err != nil {
		return checkpoint{}, fmt.Errorf("root: %w", err)
	}
	return checkpoint{origin: lines[0], size: size, root: root}, nil
}

// parseSize reads a tree size in ASCII decimal with no sign or leading zeros.
func parseSize(s string) (int64, error) {
	if s == "" || strings.Trim(s, "0123456789") != "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("tree size %q is not a decimal number", s)
	}
	size, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("tree size: %w", err)
	}
	return size, nil
}

func hash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return h, err
	}
	if len(b) != tlog.HashSize {
		return h, fmt.Errorf("a hash has %d bytes, not %d", tlog.HashSize, len(b))
	}
	copy(h[:], b)
	return h, nil
}

func hashes(ss []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(ss))
	for i, s := range ss {
		h, err := hash(s)
		if err != nil {
			return nil, fmt.Errorf("proof hash %d: %w", i, err)
		}
		out[i] = h
	}
	return out, nil
}

// httpTiles reads hash tiles from a C2SP tlog-tiles URL. x/mod names a tile tile/H/L/N[.p/W]; C2SP
// fixes H at 8 and leaves it out: tile/L/N[.p/W].
type httpTiles struct{ base string }

func (h httpTiles) Height() int { return 8 }

func (h httpTiles) SaveTiles([]tlog.Tile, [][]byte) {}

func (h httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := get(h.base + "/" + strings.Replace(t.Path(), "tile/8/", "tile/", 1))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func get(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return data, nil
}

func checkTiles(base, vkey string, leaf int64, recordFile string) (int64, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return 0, fmt.Errorf("verifier key: %w", err)
	}
	msg, err := get(base + "/checkpoint")
	if err != nil {
		return 0, err
	}
	c, err := openCheckpoint(string(msg), verifier.Name(), note.VerifierList(verifier))
	if err != nil {
		return 0, fmt.Errorf("checkpoint: %w", err)
	}
	// TileHashReader checks every tile it reads against the signed tree: what it returns is proven.
	reader := tlog.TileHashReader(tlog.Tree{N: c.size, Hash: c.root}, httpTiles{base})
	root, err := tlog.TreeHash(c.size, reader)
	if err != nil {
		return 0, fmt.Errorf("tiles: %w", err)
	}
	if root != c.root {
		return 0, fmt.Errorf("the tiles give root %v, the checkpoint signs %v", root, c.root)
	}
	if recordFile == "" {
		return c.size, nil
	}
	record, err := os.ReadFile(recordFile)
	if err != nil {
		return 0, err
	}
	if leaf >= c.size {
		return 0, fmt.Errorf("leaf %d is not in the tree of size %d", leaf, c.size)
	}
	proof, err := tlog.ProveRecord(c.size, leaf, reader)
	if err != nil {
		return 0, fmt.Errorf("proof of leaf %d: %w", leaf, err)
	}
	if err := tlog.CheckRecord(proof, c.size, c.root, leaf, tlog.RecordHash(record)); err != nil {
		return 0, fmt.Errorf("record is not leaf %d of the tree of size %d: %w", leaf, c.size, err)
	}
	return c.size, nil
}
