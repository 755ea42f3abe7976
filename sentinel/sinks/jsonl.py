"""`JsonlSink`: each interaction as one JSON line in a file, for debugging and simple pipelines.

By default content fields (see `CONTENT_FIELDS`) are left out, since this file is plaintext; the
audit trail is where content is kept, encrypted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from sentinel.cooperative import map_in_slices
from sentinel.interaction import CONTENT_FIELDS, Caller, Interaction


def metadata_only(interaction: Interaction) -> Interaction:
    """A shallow copy with every content field (see `CONTENT_FIELDS`) blanked to None."""
    return dataclasses.replace(
        interaction,
        request_messages=None,
        response_text=None,
        reasoning_text=None,
        tool_calls=None,
        extra_choices=None,
        caller=dataclasses.replace(interaction.caller, user=None),
    )


assert {"request_messages", "response_text", "reasoning_text", "tool_calls", "extra_choices", "caller.user"} == set(
    CONTENT_FIELDS
), "metadata_only must blank every content field"

_FIELDS = tuple(field.name for field in dataclasses.fields(Interaction))
_CALLER_FIELDS = tuple(field.name for field in dataclasses.fields(Caller))
_BLANK = frozenset(name for name in CONTENT_FIELDS if "." not in name)
_CALLER_BLANK = frozenset(name.partition(".")[2] for name in CONTENT_FIELDS if name.startswith("caller."))


def metadata_json(interaction: Interaction) -> bytes:
    """`orjson.dumps(metadata_only(interaction))`, the same bytes without building the copy (half the cost)."""
    data = {name: None if name in _BLANK else getattr(interaction, name) for name in _FIELDS}
    caller = interaction.caller
    data["caller"] = {name: None if name in _CALLER_BLANK else getattr(caller, name) for name in _CALLER_FIELDS}
    encoded: bytes = orjson.dumps(data)
    return encoded


class JsonlSink:
    def __init__(self, path: Path, *, include_content: bool = False, name: str = "jsonl") -> None:
        self.name = name
        self.path = path
        self.include_content = include_content
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        self._file = await asyncio.to_thread(self._open)

    def _open(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "ab")  # held open for the sink lifetime

    async def write(self, batch: Sequence[Interaction]) -> None:
        # Serialised on the event loop (~3 µs a record) in slices: a batch from a busy second is
        # hundreds of records, too long to hold the loop in one go (sentinel/cooperative.py).
        lines = await map_in_slices(orjson.dumps if self.include_content else metadata_json, batch)
        if lines:
            lines.append(b"")
            await asyncio.to_thread(self._append, b"\n".join(lines))

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

    async def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
