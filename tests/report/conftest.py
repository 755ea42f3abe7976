"""Report fixtures: a planted and a clean dataset, each built once per module through the real code paths,
and a helper that issues a report through a CLI-side `AuditService`, as `sentinel report` does.

Each dataset keeps its own clock (`Dataset.now`): code run `at_dataset_time()` sees the dataset's
timeline go on from where it stopped, so tests never depend on the wall clock or the date."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import time_machine
from prometheus_client import CollectorRegistry

from sentinel.audit.service import AuditService
from sentinel.config import Settings, load_settings
from sentinel.report.issue import issue_report, issue_reports
from sentinel.report.model import Period
from sentinel.report.signing import Issued
from tests.report.dataset import MONDAY, Planted, build, configure


@dataclass
class Dataset:
    settings: Settings
    planted: Planted
    config: Path
    now: float = field(default=0.0)
    until: float | None = None
    """The period's end when fixed (`shapes.py`); else the dataset's clock when a report is issued."""

    def __post_init__(self) -> None:
        self.now = self.now or self.planted.until

    @contextmanager
    def at_dataset_time(self) -> Iterator[None]:
        """Run with `time.time()` going on from the dataset's clock; it is kept for the next run."""
        with time_machine.travel(self.now, tick=True):
            try:
                yield
            finally:
                self.now = time.time()

    def period(self) -> Period:
        """From the dataset's start to its fixed end, or else to its clock now."""
        return Period(self.planted.since, self.until if self.until is not None else self.now)

    def issue(self, fmt: str = "json", *, reasons: bool = True, actor: str = "cli:tester") -> Issued:
        async def run() -> Issued:
            service = AuditService(self.settings, CollectorRegistry(), "report-test", cli=True)
            await service.start()
            try:
                return await issue_report(service, period, fmt, actor=actor, include_reasons=reasons)  # type: ignore[arg-type]
            finally:
                await service.stop()

        period = self.period()
        with self.at_dataset_time():
            return asyncio.run(run())

    def issue_all(self, formats: tuple[str, ...]) -> tuple[dict[str, Any], list[Issued]]:
        """One report, gathered once, issued in each of `formats` (as `--bundle` does)."""

        async def run() -> tuple[dict[str, Any], list[Issued]]:
            service = AuditService(self.settings, CollectorRegistry(), "report-test", cli=True)
            await service.start()
            try:
                return await issue_reports(service, period, formats, actor="cli:tester", include_reasons=True)  # type: ignore[arg-type]
            finally:
                await service.stop()

        period = self.period()
        with self.at_dataset_time():
            return asyncio.run(run())

    def report(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.issue("json", **kwargs).body)
        return data

    def configure(self, **audit: Any) -> Dataset:
        """This dataset with `audit` settings changed in its config file (use on a fresh copy)."""
        return Dataset(configure(self.config, **audit), self.planted, self.config, self.now, self.until)


def make_dataset(
    tmp_path_factory: pytest.TempPathFactory, *, clean: bool, at: str = MONDAY, fresh: bool = False
) -> Dataset:
    data_dir = tmp_path_factory.mktemp("clean" if clean else "planted") / "data"
    settings, planted = build(data_dir, clean=clean, at=at, fresh=fresh)
    return Dataset(settings, planted, data_dir / "sentinel.yaml")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_dataset(tmp_path_factory, clean=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_dataset(tmp_path_factory, clean=True)


@pytest.fixture(scope="module")
def fresh_deployment(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A clean dataset of a deployment started just before the period (no call history)."""
    return make_dataset(tmp_path_factory, clean=True, fresh=True)


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Callable[[Dataset], Dataset]:
    """A private copy of a dataset's data directory (for tests that write to it)."""

    def copy(dataset: Dataset) -> Dataset:
        target = tmp_path / "data"
        shutil.copytree(dataset.settings.data_dir, target)
        config = target / "sentinel.yaml"
        config.write_text(dataset.config.read_text().replace(str(dataset.settings.data_dir), str(target)))
        return Dataset(load_settings(config), dataset.planted, config, dataset.now, dataset.until)

    return copy
