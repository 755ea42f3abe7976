"""Reading a few metrics out of a Prometheus text exposition without parsing all of it.

Model servers expose hundreds of series (vLLM's histograms alone are thousands of lines); the
poller runs on the event loop, so only the lines of the wanted metrics are handed to the parser.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from sentinel.gpu.readings import SourceAbsent


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def prefixes_present(text: str, prefixes: Iterable[str]) -> set[str]:
    """Which of `prefixes` start at least one sample line (comments ignored)."""
    wanted = tuple(prefixes)
    found: set[str] = set()
    for line in text.splitlines():
        if line.startswith(wanted):
            found.update(p for p in wanted if line.startswith(p))
            if len(found) == len(wanted):
                break
    return found


def samples(text: str, names: Iterable[str]) -> list[Sample]:
    """Every sample of the metrics named in `names` (exact names, so `a` does not match `a_total`)."""
    wanted = tuple(names)
    lines = [
        line
        for line in text.splitlines()
        if line.startswith(wanted) and line.partition("{")[0].partition(" ")[0] in wanted
    ]
    if not lines:
        return []
    try:
        families = list(text_string_to_metric_families("\n".join(lines) + "\n"))
    except ValueError as exc:
        raise SourceAbsent(f"unparseable exposition: {exc}") from None
    return [Sample(s.name, dict(s.labels), float(s.value)) for family in families for s in family.samples]
