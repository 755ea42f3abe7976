"""Content-defined chunking (FastCDC via pyfastcdc) over a stream, in bounded memory.

Cut points depend on content, not offsets, so inserting bytes into a file only changes the chunks
around the edit, and an unchanged file yields the same chunks (and chunk ids) every time. The
sizes are fixed per repository (stored in its config) because other sizes would cut differently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from pyfastcdc import FastCDC


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int
    avg_size: int
    max_size: int


class HashingReader:
    """Wraps a binary stream: SHA-256 and byte count of everything read through it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readinto(self, buffer: memoryview) -> int:
        count = self._stream.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self.sha256.update(buffer[:count])
            self.size += count
        return int(count or 0)


class Chunker:
    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)

    def chunks(self, reader: HashingReader) -> Iterator[memoryview]:
        """Yield the stream's chunks. Each view is valid only until the next one is produced."""
        for chunk in self._cdc.cut_stream(reader):
            yield chunk.data
