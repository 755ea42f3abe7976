"""compose/ describes a deployment consistent with the code. Docker cannot run here, so this reads
the files: structure, healthchecks, volumes, no secrets, every mounted config present, ports and
paths equal to Sentinel's settings, Prometheus scraping Sentinel's admin /metrics with the generated
rules, Grafana provisioning the generated dashboards; promtool and amtool validate the configs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sentinel.config import Settings
from sentinel.grafana.desired import ELASTICSEARCH_UID, datasources
from sentinel.grafana.settings import GrafanaSettings
from sentinel.monitoring.dashboards import PROMETHEUS_UID
from sentinel.monitoring.generate import DASHBOARDS_DIR, RULES_FILE, artefacts

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
DEFAULTS = Settings()

LONG_RUNNING = {
    "sentinel",
    "vllm",
    "ollama",
    "dcgm-exporter",
    "elasticsearch",
    "kibana",
    "otel-collector",
    "prometheus",
    "alertmanager",
    "grafana",
    "seaweedfs",
}
NO_HEALTHCHECK = {"otel-collector": "distroless image: nothing inside to probe with"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the mounts that are files or directories of this repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE / source).resolve()
    return mounts


def test_every_part_of_the_deployment_is_there(compose: dict[str, Any]) -> None:
    found = services(compose)
    assert set(found) >= LONG_RUNNING
    assert found["vllm"]["profiles"] == ["vllm"] and found["ollama"]["profiles"] == ["ollama"]
    assert found["kibana"]["profiles"] == ["kibana"]
    for name in ("sentinel", "elasticsearch", "prometheus", "alertmanager", "grafana", "seaweedfs", "otel-collector"):
        assert "profiles" not in found[name], f"{name} must start by default"
    assert found["sentinel"]["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (ROOT / "Dockerfile").exists()


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag not in ("", "latest"), f"{name}: pin {image}"


def test_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name not in LONG_RUNNING:
            assert service.get("restart") == "no", f"{name}: one-shot services do not restart"
            continue
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name


def test_named_volumes_and_mounted_files(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert not source.startswith("/"), f"{name}: host path {source} outside the repository"
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                used.add(source)
    assert used == declared


def test_no_secret_in_the_compose_file(compose: dict[str, Any]) -> None:
    example = (COMPOSE / ".env.example").read_text()
    example_vars = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    text = (COMPOSE / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required <= example_vars, f"not in .env.example: {required - example_vars}"
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:[?-][^}]*)?\}", value), f"{name}: {key} must come from .env"
    for line in example.splitlines():
        if re.match(r"^[A-Z0-9_]*(PASSWORD|SECRET|ACCESS_KEY)[A-Z0-9_]*=", line):
            assert line.endswith("=change-me"), line
    assert "compose/.env" in (ROOT / ".gitignore").read_text()


def test_sentinel_ports_and_settings_match_the_code(compose: dict[str, Any]) -> None:
    sentinel = services(compose)["sentinel"]
    env = environment(sentinel)
    assert int(env["SENTINEL_PORT"]) == DEFAULTS.port == 8080
    assert int(env["SENTINEL_ADMIN_PORT"]) == DEFAULTS.admin_port == 9464
    assert env["SENTINEL_HOST"] == env["SENTINEL_ADMIN_HOST"] == "0.0.0.0"
    published = {p.rsplit(":", 1)[1] for p in sentinel["ports"]}
    assert published == {str(DEFAULTS.port), str(DEFAULTS.admin_port)}
    # Every SENTINEL_* variable is one Settings accepts.
    from sentinel.config import load_settings

    load_settings(
        None,
        upstream={"url": "http://vllm:8000"},
        tracing={"otlp_endpoint": env["SENTINEL_TRACING_OTLP_ENDPOINT"]},
        gpu={"sources": ["auto"], "dcgm_url": ""},
    )
    assert env["SENTINEL_UPSTREAM_URL"] == "${SENTINEL_UPSTREAM_URL:-http://vllm:8000}"
    assert "8000" in services(compose)["vllm"]["command"]
    assert env["SENTINEL_TRACING_OTLP_ENDPOINT"] == "http://otel-collector:4318/v1/traces"
    collector = yaml.safe_load((COMPOSE / "otel-collector" / "config.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {DEFAULTS.port} {DEFAULTS.admin_port}" in dockerfile and "HEALTHCHECK" in dockerfile


def test_prometheus_scrapes_sentinel_and_loads_the_generated_rules(compose: dict[str, Any], tmp_path: Path) -> None:
    prometheus = services(compose)["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())

    sentinel_jobs = [job for job in config["scrape_configs"] if job["job_name"] == "sentinel"]
    assert len(sentinel_jobs) == 1
    job = sentinel_jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"sentinel:{DEFAULTS.admin_port}"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]

    host_rules = []
    for container_path in config["rule_files"]:
        directory, _, name = container_path.rpartition("/")
        host = mounts[directory] / name
        assert host.exists(), container_path
        host_rules.append(host)
    assert [p.resolve() for p in host_rules] == [(ROOT / RULES_FILE).resolve()]

    # promtool validates the very config, with container paths mapped back to this repository.
    checked = dict(config, rule_files=[str(p) for p in host_rules])
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(checked))
    result = subprocess.run(["promtool", "check", "config", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_is_valid(compose: dict[str, Any]) -> None:
    mounts = bind_mounts(services(compose)["alertmanager"])
    config = mounts["/etc/alertmanager/alertmanager.yml"]
    result = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    routes = yaml.safe_load(config.read_text())["route"]["routes"]
    assert any('severity="critical"' in r["matchers"] for r in routes)


def test_grafana_provisions_the_generated_dashboards_and_the_datasources_they_use(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]

    providers = yaml.safe_load((provisioning / "dashboards" / "sentinel.yml").read_text())["providers"]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["folderUid"] == GrafanaSettings().folder_uid
    dashboards_dir = mounts[provider["options"]["path"]]
    assert dashboards_dir == (ROOT / DASHBOARDS_DIR).resolve()
    generated = {p.name for p in artefacts() if p.parent == DASHBOARDS_DIR}
    assert {p.name for p in dashboards_dir.glob("*.json")} == generated and len(generated) == 4

    files = yaml.safe_load((provisioning / "datasources" / "sentinel.yml").read_text())["datasources"]
    by_uid = {ds["uid"]: ds for ds in files}
    assert set(by_uid) == {PROMETHEUS_UID, ELASTICSEARCH_UID}
    api = datasources(
        GrafanaSettings(
            prometheus_url="http://prometheus:9090",
            elasticsearch_url="http://elasticsearch:9200",
            elasticsearch_user="grafana_reader",
        )
    )
    for wanted in api:  # file provisioning and `sentinel grafana provision` create the same datasources
        provisioned = by_uid[wanted.uid]
        for key, value in wanted.body.items():
            assert provisioned.get(key) == value, f"{wanted.uid}.{key}: {provisioned.get(key)} != {value}"
    assert by_uid[ELASTICSEARCH_UID]["secureJsonData"]["basicAuthPassword"] == "$GRAFANA_ES_PASSWORD"
    assert "GRAFANA_ES_PASSWORD" in environment(grafana)
    port = services(compose)["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert by_uid[PROMETHEUS_UID]["url"] == f"http://prometheus:{port}"
