"""How long-running operations report progress, without depending on a terminal (the CLI draws rich bars)."""

from __future__ import annotations


class Progress:
    """Callbacks; the default does nothing. Called from the working thread only."""

    def begin(self, description: str, total: int | None) -> None:
        """A phase starts; `total` bytes (or items) if known."""

    def advance(self, amount: int) -> None:
        """`amount` more bytes (or items) done in the current phase."""

    def item(self, name: str) -> None:
        """Now working on `name` (a file path, a chunk, ...)."""

    def end(self) -> None:
        """The current phase is done."""
