"""`JsonlSink`: each interaction as one JSON line in a file, for debugging and simple pipelines.

By default content fields (see `CONTENT_FIELDS`) are left out, since this file is plaintext; the
audit trail is where content is kept, encrypted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from sentinel.interaction import CONTENT_FIELDS, Interaction


def metadata_only(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every content field blanked (None), the rest untouched."""
    for name in CONTENT_FIELDS:
        holder = record
        *parents, leaf = name.split(".")
        for parent in parents:
            holder = holder[parent]
        holder[leaf] = None
    return record


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
        lines = []
        for interaction in batch:
            record = interaction.to_dict()
            if not self.include_content:
                record = metadata_only(record)
            lines.append(orjson.dumps(record) + b"\n")
        await asyncio.to_thread(self._append, b"".join(lines))

    def _append(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

    async def stop(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
