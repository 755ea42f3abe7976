"""Audit documents: sealing keeps the stored format (the bytes `dataclasses.asdict` gave) and verifies."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson

from sentinel.audit import record as records
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.interaction import Caller, Interaction, Operation, Outcome, Protocol, Usage


@dataclasses.dataclass
class Finding:
    rule: str
    count: int


def rich_interaction() -> Interaction:
    return Interaction(
        id="i-1",
        started_at=1795891064.5,
        method="POST",
        path="/v1/chat/completions",
        protocol=Protocol.OPENAI,
        operation=Operation.CHAT,
        stream=True,
        model_requested="deepseek-r1",
        sampling={"temperature": 0.2, "stop": ["\n"], "max_tokens": 9},
        caller=Caller(user="patient-7", api_key_id="key-abc", address="10.0.0.1"),
        request_messages=[{"role": "user", "content": "héllo"}],
        response_text="hi",
        reasoning_text="think",
        tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        extra_choices=["other"],
        usage=Usage(3, 4, 7, 1, "usage"),
        ttft_s=0.01,
        outcome=Outcome.ERROR,
        error_type="stream_error",
        error_message="overloaded",
        # A dataclass nested in a plain value: `asdict` turned it into a dict with sorted keys.
        annotations={"policy": {"z": 1, "findings": [Finding("phi", 2)]}},
    )


def keyring(tmp_path: Path) -> KeyRing:
    return KeyRing(LocalKeyFile.create(tmp_path / "kek.key"))


def test_metadata_serialises_exactly_as_dataclasses_asdict_did(tmp_path: Path) -> None:
    interaction = rich_interaction()
    index_key = keyring(tmp_path).index_key()
    metadata, content = records._metadata(interaction, index_key)

    expected = dataclasses.asdict(interaction)
    expected_content = {name: expected.pop(name) for name in records.ENCRYPTED_FIELDS if name in expected}
    user = expected["caller"].pop("user")
    expected_content["caller_user"] = user
    expected["caller"]["user_index"] = records.blind_index(index_key, user)

    def as_stored(value: Any) -> bytes:
        return records.canonical({"interaction": value})

    assert as_stored(metadata) == as_stored(expected)
    assert list(content) == list(expected_content)
    assert [orjson.dumps(v) for v in content.values()] == [orjson.dumps(v) for v in expected_content.values()]


def test_sealed_record_is_stored_in_encoded_form_and_verifies(tmp_path: Path) -> None:
    ring = keyring(tmp_path)
    doc, stored = records.seal_encoded(
        ring, instance="n1", seq=5, prev_hash=records.GENESIS, kind=records.INTERACTION, interaction=rich_interaction()
    )
    assert stored == records.encode(doc)
    claimed, actual = records.stored_hashes(stored)
    assert claimed == actual == doc["hash"] == records.digest(orjson.loads(stored))
    nonces = {blob["nonce"] for blob in doc["encrypted"].values()}
    assert len(nonces) == len(doc["encrypted"]) == 7  # every content field, each under its own nonce
    plain = records.decrypt(ring, orjson.loads(stored))
    assert plain["caller_user"] == "patient-7" and plain["request_messages"][0]["content"] == "héllo"
    assert doc["interaction"]["annotations"]["policy"]["findings"] == [Finding("phi", 2)]
    assert b'"findings":[{"count":2,"rule":"phi"}]' in stored
