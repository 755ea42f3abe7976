"""A PostgreSQL database streamed from `pg_dump` straight into the chunker (never staged on disk).

Plain SQL format on purpose: the custom format compresses, and compressed output changes
everywhere when one row changes, which defeats content-defined deduplication; plain dumps of
mostly unchanged tables deduplicate well and restore with `psql`. The password goes to pg_dump in
`PGPASSWORD` (its environment), never on its command line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sentinel.backup.settings import PostgresSourceSettings
from sentinel.backup.sources import Source, SourceError, SourceItem

DUMP_FOOTER = b"-- PostgreSQL database dump complete"


class PostgresSource(Source):
    kind = "postgres"

    def __init__(self, name: str, spec: PostgresSourceSettings) -> None:
        super().__init__(name)
        self.spec = spec

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.spec.password is not None:
            env["PGPASSWORD"] = self.spec.password.get_secret_value()
        return env

    @contextlib.contextmanager
    def _dump(self) -> Iterator[IO[bytes]]:
        command = [
            self.spec.pg_dump,
            "--format=plain",
            "--no-password",
            "--dbname",
            self.spec.dsn,
            *self.spec.extra_args,
        ]
        try:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self._env()
            )
        except OSError as exc:
            raise SourceError(f"source {self.name!r}: cannot run {self.spec.pg_dump}: {exc.strerror}") from exc
        assert process.stdout is not None and process.stderr is not None
        errors: list[bytes] = []
        # Drain stderr on the side so a chatty pg_dump never blocks on a full pipe.
        reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        completed = False
        try:
            yield process.stdout
            completed = True
        finally:
            if not completed:
                process.kill()
            process.stdout.close()
            code = process.wait()
            reader.join(timeout=10)
            process.stderr.close()
        if code != 0:
            message = b"".join(errors).decode(errors="replace").strip().splitlines()
            raise SourceError(f"source {self.name!r}: pg_dump failed (exit {code}): {' '.join(message[-3:])}")

    def items(self, scratch: Path) -> Iterator[SourceItem]:
        self.meta["format"] = "plain"
        self.meta["dsn"] = self.spec.dsn
        yield SourceItem("dump.sql", "file", mode=0o600, opener=self._dump)
