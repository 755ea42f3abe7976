"""bench/audit_store.py: the generated trail is what the real code writes — it verifies intact,
its records decrypt with the generated key file, and its chains and instances are as asked."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from sentinel.audit import record as record_module
from sentinel.audit.kek import LocalKeyFile
from sentinel.audit.keyring import KeyRing
from sentinel.audit.record import blind_index, decrypt
from sentinel.audit.service import open_store, stored_public_keys
from sentinel.audit.verify import verify
from sentinel.config import load_settings

BENCH = Path(__file__).resolve().parents[2] / "bench"


def generator() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the worker processes import the module by name
    spec = importlib.util.spec_from_file_location("audit_store", BENCH / "audit_store.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_store"] = module
    spec.loader.exec_module(module)
    return module


async def check(out: Path) -> dict[str, Any]:
    settings = load_settings(out / "sentinel.yaml")  # what `sentinel audit verify --config` reads
    store = open_store(settings, read_only=True)
    await store.open()
    try:
        report = await verify(store, (await stored_public_keys(store)).get)
        kinds = dict(await store.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind"))  # type: ignore[attr-defined]
        keyring = KeyRing(LocalKeyFile.load(settings.resolve_path(settings.key_file)), keys=await store.keys())
        doc = await store.get("sentinel-b:000000000500")
        assert doc is not None
        event = await store.get("sentinel-a.cli:000000000001")
        assert event is not None
        return {
            "report": report,
            "kinds": kinds,
            "doc": doc,
            "content": decrypt(keyring, doc),
            "event": decrypt(keyring, event),
            "index_key": keyring.index_key(),
        }
    finally:
        await store.close()


def test_generated_trail_verifies_and_decrypts(tmp_path: Path) -> None:
    audit_store = generator()
    end = 1_811_462_400.0  # 2027-05-28 00:00 UTC: a fixed instant, not the wall clock
    out = tmp_path / "data"
    result = audit_store.generate(out, 2000, instances=2, workers=2, events_every=500, end=end)

    assert result.chains == {"sentinel-a": 1000, "sentinel-a.cli": 4, "sentinel-b": 1000}
    assert (result.records, result.interactions, result.events) == (2004, 2000, 4)
    assert vars(record_module)["time"] is time  # the simulated clock is gone from this process

    found = asyncio.run(check(out))
    report = found["report"]
    assert report.ok, report.findings
    assert report.records_checked == 2004
    assert {r.instance for r in report.instances} == {"sentinel-a", "sentinel-b", "sentinel-a.cli"}
    assert all(r.unsealed == 0 and r.checkpoints_checked >= 1 for r in report.instances)
    assert found["kinds"] == {"interaction": 2000, "event": 4}

    doc, content = found["doc"], found["content"]
    interaction = doc["interaction"]
    assert end - 30 * 86400 <= interaction["started_at"] <= doc["recorded_at"] <= end + 3600
    day = time.strftime("%Y%m%d", time.gmtime(doc["recorded_at"]))  # the data key of the record's (simulated) day
    assert doc["encrypted"] and all(blob["kid"].startswith(f"dk-{day}-") for blob in doc["encrypted"].values())
    assert "request_messages" in content and len(str(content["request_messages"])) >= 700
    if interaction["caller"]["user_index"] is not None:
        assert blind_index(found["index_key"], content["caller_user"]) == interaction["caller"]["user_index"]
    if found["event"]:
        assert set(found["event"]) == {"reason"}
