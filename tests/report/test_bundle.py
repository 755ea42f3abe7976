"""`sentinel report --bundle DIR` as an auditor receives it: every form, each verifying at once (offline
against the bundle's pins, and against the trail), the manifest checking, and the README's own Python
snippets run as written, succeeding on the bundle and failing on a modified file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report.conftest import Dataset
from tests.report.test_cli import sentinel

FORMS = ("report.html", "report.pdf", "report.md", "report.json", "report.oscal.json")


@pytest.fixture(scope="module")
def bundled(clean: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    root = tmp_path_factory.mktemp("bundle")
    shutil.copytree(clean.settings.data_dir, root / "data")
    config = root / "data" / "sentinel.yaml"
    config.write_text(clean.config.read_text().replace(str(clean.settings.data_dir), str(root / "data")))
    from sentinel.config import load_settings

    dataset = Dataset(load_settings(config), clean.planted, config, clean.now)
    directory = root / "evidence"
    made = sentinel(
        dataset,
        "report",
        "--from",
        str(int(dataset.planted.since)),
        "--to",
        str(dataset.now),
        "--bundle",
        str(directory),
    )
    assert made.returncode == 0, made.stderr
    assert "evidence bundle in" in made.stderr
    return dataset, directory


def snippets(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_the_bundle_holds_every_form_and_what_checks_it(bundled: tuple[Dataset, Path]) -> None:
    _, directory = bundled
    names = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    for form in FORMS:
        assert {form, form + ".sig.json"} <= names
    assert {"pins.txt", "README.md", "SHA256SUMS", "checkpoints/report-test.json"} <= names
    assert "report.pdf.certificate.pem" in names
    report = json.loads((directory / "report.json").read_text())
    ids = {json.loads((directory / f"{form}.sig.json").read_text())["report_id"] for form in FORMS}
    assert ids == {report["report_id"]}
    checkpoints = json.loads((directory / "checkpoints" / "report-test.json").read_text())
    chain = next(i for i in report["integrity"]["instances"] if i["instance"] == "report-test")
    assert checkpoints and checkpoints[-1]["seq"] >= chain["last_seq"]  # the one that seals the period's records
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=directory).returncode == 0


@pytest.mark.parametrize("form", FORMS)
def test_each_form_verifies_at_once_offline_and_in_the_trail(bundled: tuple[Dataset, Path], form: str) -> None:
    dataset, directory = bundled
    offline = sentinel(dataset, "report", "verify", str(directory / form), "--public-key", str(directory / "pins.txt"))
    assert offline.returncode == 0, offline.stderr
    online = sentinel(dataset, "report", "verify", str(directory / form))
    assert online.returncode == 0, online.stderr


def test_the_readme_snippets_run_and_catch_a_change(bundled: tuple[Dataset, Path], tmp_path: Path) -> None:
    _, directory = bundled
    code = snippets((directory / "README.md").read_text())
    assert len(code) == 3
    reports, pdf, checkpoints = (
        subprocess.run([sys.executable, "-c", c], cwd=directory, capture_output=True, text=True) for c in code
    )
    assert pdf.returncode == 0, pdf.stderr
    assert pdf.stdout.startswith("OK report.pdf signed by sk-")
    assert reports.returncode == 0, reports.stderr
    assert sorted(line.split()[1] for line in reports.stdout.splitlines()) == sorted(FORMS)
    assert checkpoints.returncode == 0, checkpoints.stderr
    assert checkpoints.stdout.count("OK report-test ") >= 1

    changed = tmp_path / "changed"
    shutil.copytree(directory, changed)
    md = changed / "report.md"
    md.write_text(md.read_text().replace("no exceptions found", "no exception found", 1))
    broken = subprocess.run([sys.executable, "-c", code[0]], cwd=changed, capture_output=True, text=True)
    assert broken.returncode != 0 and "report.md.sig.json: the file was modified" in broken.stderr
    pdf_bytes = bytearray((changed / "report.pdf").read_bytes())
    pdf_bytes[len(pdf_bytes) // 3] ^= 0x01  # inside the signed byte range
    (changed / "report.pdf").write_bytes(bytes(pdf_bytes))
    altered = subprocess.run([sys.executable, "-c", code[1]], cwd=changed, capture_output=True, text=True)
    assert altered.returncode != 0 and "OK report.pdf" not in altered.stdout
    cp = changed / "checkpoints" / "report-test.json"
    docs = json.loads(cp.read_text())
    docs[0]["seq"] += 1
    cp.write_text(json.dumps(docs))
    forged = subprocess.run([sys.executable, "-c", code[2]], cwd=changed, capture_output=True, text=True)
    assert forged.returncode != 0 and "InvalidSignature" in forged.stderr


def test_a_bundle_goes_into_a_new_directory(bundled: tuple[Dataset, Path]) -> None:
    dataset, directory = bundled
    again = sentinel(dataset, "report", "--from", "1d", "--bundle", str(directory))
    assert again.returncode == 2 and "not empty" in again.stderr
