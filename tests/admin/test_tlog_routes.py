"""The chain served as a C2SP tlog-tiles log on a running Sentinel's admin port, read by Go's
`golang.org/x/mod/sumdb/tlog` (tests/interop/tlogcheck): the tiles authenticate against the signed
checkpoint, and a record the proxy wrote is proven a leaf of the tree from them, with no Sentinel code
on the reading side."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import openai
import pytest
import requests

from sentinel.audit.note import Checkpoint, origin_of, verifier_key
from sentinel.audit.tiles import WIDTH, tile_path
from sentinel.audit.tlog import leaf_hash, tree_hash
from tests.conftest import Running, wait_until
from tests.support.frames import JSON_HEADERS, chat_completion
from tests.support.upstream import Script, ScriptedUpstream

CALLS = 300  # more than a tile of leaves: a full level-0 tile, a partial one and a level-1 tile
SIGNED = WIDTH + 4  # a checkpoint beyond the first tile: one is signed every 16 records, so the newest is
# within 16 of the head (300 calls and the start-up events), wherever the batches fell


@pytest.fixture
def served(upstream: ScriptedUpstream, start_sentinel: object) -> Running:
    upstream.script("/v1/chat/completions", Script(headers=JSON_HEADERS, chunks=[chat_completion("fine")]))
    running: Running = start_sentinel(upstream.url, instance_id="tiles-test", audit={"checkpoint_every": 16})  # type: ignore[operator]
    with openai.OpenAI(base_url=running.url + "/v1", api_key="sk-caller", max_retries=0) as client:
        for n in range(CALLS):
            client.chat.completions.create(model="deepseek-r1", messages=[{"role": "user", "content": f"#{n}"}])
    return running


def log_url(running: Running) -> str:
    return f"{running.admin_url}/tlog/tiles-test"


def newest(running: Running, at_least: int) -> Checkpoint:
    """The served checkpoint, once it covers `at_least` leaves (the writer signs every 16 records)."""
    seen: list[Checkpoint] = []

    def covered() -> bool:
        answer = requests.get(log_url(running) + "/checkpoint", timeout=30)
        if answer.status_code != 200:
            return False
        seen[:] = [Checkpoint.parse(answer.text.split("\n\n", 1)[0] + "\n")]
        return seen[0].size >= at_least

    wait_until(covered, timeout=60, interval=0.05)
    return seen[0]


def spool_records(running: Running) -> list[bytes]:
    audit = running.sentinel.audit
    assert audit is not None
    db = sqlite3.connect(f"file:{audit.spool.path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    finally:
        db.close()
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    return [bytes(body) for _, body in rows]


def vkey(running: Running) -> str:
    audit = running.sentinel.audit
    assert audit is not None and audit.keyring is not None
    _, signing = audit.keyring.signing_key()
    return verifier_key(origin_of(running.sentinel.settings.audit.log_origin, "tiles-test"), signing.public_key())


def test_go_reads_the_served_tiles_and_proves_a_proxied_record(
    served: Running, tlogcheck: Path, tmp_path: Path
) -> None:
    checkpoint = newest(served, SIGNED)
    records = spool_records(served)[: checkpoint.size]
    assert tree_hash([leaf_hash(r) for r in records]) == checkpoint.root

    for leaf in (0, 255, 256, checkpoint.size - 1):
        (record := tmp_path / f"record-{leaf}").write_bytes(records[leaf])
        run = subprocess.run(
            [
                str(tlogcheck),
                "-vkey",
                vkey(served),
                "-tiles",
                log_url(served),
                "-leaf",
                str(leaf),
                "-record",
                str(record),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (run.returncode, run.stderr) == (0, ""), run.stderr
        # The writer may have signed a newer checkpoint meanwhile: Go read that one, and the leaf is in it too.
        assert run.stdout.startswith("ok ") and int(run.stdout.split()[1]) >= checkpoint.size

    # A record that is not the leaf: Go refuses it from the same tiles.
    (other := tmp_path / "other").write_bytes(records[1])
    run = subprocess.run(
        [str(tlogcheck), "-vkey", vkey(served), "-tiles", log_url(served), "-leaf", "0", "-record", str(other)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "is not leaf 0" in run.stderr


def test_tiles_are_served_in_the_c2sp_layout_and_nothing_else_is(served: Running) -> None:
    newest(served, SIGNED)
    records = spool_records(served)
    leaves = [leaf_hash(r) for r in records]
    base = log_url(served)

    full = requests.get(f"{base}/{tile_path(0, 0)}", timeout=30)
    assert full.status_code == 200 and full.content == b"".join(leaves[:WIDTH])
    assert full.headers["content-type"] == "application/octet-stream"
    assert "immutable" in full.headers["cache-control"]
    partial = requests.get(f"{base}/{tile_path(0, 1, 3)}", timeout=30)  # the first 3 of the next tile
    assert partial.status_code == 200 and partial.content == b"".join(leaves[WIDTH : WIDTH + 3])
    level1 = requests.get(f"{base}/{tile_path(1, 0, 1)}", timeout=30)
    assert level1.status_code == 200 and level1.content == tree_hash(leaves[:WIDTH])
    note = requests.get(f"{base}/checkpoint", timeout=30)
    assert note.headers["content-type"] == "text/plain; charset=utf-8" and note.text.startswith(
        f"{served.sentinel.settings.audit.log_origin}/tiles-test\n"
    )

    # Up to the newest signed checkpoint and not one leaf further, however far the spool's tiles reach.
    signed = newest(served, SIGNED).size
    edge = requests.get(f"{base}/{tile_path(0, 1, signed - WIDTH)}", timeout=30)
    assert edge.status_code == 200 and edge.content == b"".join(leaves[WIDTH:signed])
    beyond = requests.get(f"{base}/{tile_path(0, 1, signed - WIDTH + 1)}", timeout=30)
    assert beyond.status_code == 404 and "newest signed checkpoint" in beyond.text

    for path, why in (
        (tile_path(0, 1), "not in the tree"),  # the second level-0 tile is not full
        (tile_path(0, 7), "not in the tree"),
        (tile_path(0, 2**62), "not in the tree"),  # an index SQLite could not take
        ("tile/0/x000/000", "canonical"),
        ("tile/0/0", "3 digits"),
        ("tile/0/000.p/256", "width"),
        ("tile/entries/000", "entry bundles are not served"),
        ("tile/0/x1/000", "x and 3 digits"),
        ("tile/64/000", "0 to 63"),
    ):
        answer = requests.get(f"{base}/{path}", timeout=30)
        assert answer.status_code == 404 and why in answer.text, (path, answer.text)
    other = requests.get(f"{served.admin_url}/tlog/another-node/checkpoint", timeout=30)
    assert other.status_code == 404 and "its own chain" in other.text
