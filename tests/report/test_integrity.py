"""Chain verification for reports, window by window: the windows can be verified in worker processes
and merged, and the result is the same as one pass in this process, tampering included."""

from __future__ import annotations

import asyncio
from typing import Any

from sentinel.audit.store.embedded import EmbeddedStore
from sentinel.report.integrity import IntegrityResult, verify_period
from sentinel.report.issue import public_keys
from tests.report.conftest import Dataset


def _summary(result: IntegrityResult) -> dict[str, Any]:
    census = result.census
    return {
        "records": result.records_checked,
        "reports": [
            (r.instance, r.first_seq, r.last_seq, r.records_checked, r.checkpoints_checked, r.last_checkpoint_seq)
            for r in result.instances
        ],
        "findings": sorted((f.instance, f.kind, f.seq, f.seq_to, f.doc_id) for f in result.findings),
        "census": (
            dict(census.records),
            dict(census.encrypted_by_kid),
            census.kid_first_seen,
            census.kid_last_seen,
            census.plaintext,
            sorted(str(e) for e in census.exceptions),
            census.phi_records,
            dict(census.phi),
            dict(census.policy_actions),
        ),
    }


def test_windows_in_worker_processes_give_the_same_result(planted: Dataset) -> None:
    async def verify(window: int, processes: int) -> dict[str, Any]:
        store = EmbeddedStore(planted.settings.resolve_path(planted.settings.audit.store_path), read_only=True)
        await store.open()
        try:
            lookup = public_keys(await store.keys())
            done: list[int] = []
            result = await verify_period(
                store, lookup, planted.period(), window=window, processes=processes, progress=done.append
            )
            assert sum(done) == result.records_checked
            return _summary(result)
        finally:
            await store.close()

    whole = asyncio.run(verify(1_000_000, 1))
    assert whole["records"] > 50
    assert (planted.planted.tampered, "modified") in {(f[4], f[1]) for f in whole["findings"]}
    assert asyncio.run(verify(7, 1)) == whole
    assert asyncio.run(verify(7, 2)) == whole
