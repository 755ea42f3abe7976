"""Settings: one typed object from YAML, env and flags, with errors that name the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel import __version__
from sentinel.config import ConfigError, load_settings


def test_precedence_flags_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sentinel.yaml"
    config.write_text("upstream:\n  url: http://yaml:1\n  read_timeout: 7\nport: 9000\nadmin_port: 9001\n")
    monkeypatch.setenv("SENTINEL_PORT", "9100")
    monkeypatch.setenv("SENTINEL_UPSTREAM_CONNECT_TIMEOUT", "3")
    settings = load_settings(config, upstream={"url": "http://flag:2"})
    assert settings.upstream.url == "http://flag:2"
    assert settings.upstream.read_timeout == 7 and settings.upstream.connect_timeout == 3
    assert settings.port == 9100 and settings.admin_port == 9001


def test_documented_env_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "SENTINEL_UPSTREAM_URL": "http://vllm:8000/",
        "SENTINEL_HOST": "0.0.0.0",
        "SENTINEL_PORT": "18080",
        "SENTINEL_ADMIN_PORT": "19464",
        "SENTINEL_DATA_DIR": str(tmp_path),
        "SENTINEL_UPSTREAM_WARM_WINDOW": "0",
        "SENTINEL_UPSTREAM_MAX_WARM": "8",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.upstream.url == "http://vllm:8000"
    assert (settings.upstream.warm_window, settings.upstream.max_warm) == (0, 8)
    assert (settings.host, settings.port, settings.admin_port, settings.data_dir) == ("0.0.0.0", 18080, 19464, tmp_path)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SENTINEL_PORT": "eighty"}, "port (env SENTINEL_PORT)"),
        ({"SENTINEL_UPSTREAM_URL": "vllm:8000"}, "upstream.url (env SENTINEL_UPSTREAM_URL)"),
        ({"SENTINEL_UPSTREAM_READ_TIMEOUT": "-1"}, "upstream.read_timeout (env SENTINEL_UPSTREAM_READ_TIMEOUT)"),
        ({"SENTINEL_UPSTREAM_WARM_WINDOW": "-1"}, "upstream.warm_window (env SENTINEL_UPSTREAM_WARM_WINDOW)"),
        ({"SENTINEL_LOG_FORMAT": "xml"}, "log_format (env SENTINEL_LOG_FORMAT)"),
    ],
)
def test_bad_value_names_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert named in str(caught.value)


def test_unknown_yaml_key_and_bad_yaml(tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("upstream:\n  ur1: http://typo\n")
    with pytest.raises(ConfigError, match=r"upstream\.ur1 .*unknown setting"):
        load_settings(config)
    config.write_text("port: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")


def test_secret_from_file_never_in_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("SENTINEL_UPSTREAM_API_KEY_FILE", str(key_file))
    settings = load_settings()
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "sk-from-file"
    assert "sk-from-file" not in repr(settings)
    monkeypatch.setenv("SENTINEL_UPSTREAM_API_KEY_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="cannot read upstream.api_key file"):
        load_settings()


def test_credentials_in_the_upstream_url_are_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_UPSTREAM_URL", "http://admin:hunter2@vllm:8000")
    with pytest.raises(ConfigError, match=r"upstream\.url.*must not carry credentials") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sentinel", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_cli_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"sentinel, version {__version__}"
    help_text = run_cli("--help").stdout
    assert "sentinel serve --upstream" in help_text and "demo" in help_text
    serve_help = run_cli("serve", "--help").stdout
    for flag in ("--upstream", "--host", "--port", "--admin-port", "--data-dir", "SENTINEL_UPSTREAM_URL"):
        assert flag in serve_help


def test_cli_serve_bad_value_exits_2_naming_key(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--upstream",
        "http://127.0.0.1:9",
        env={"SENTINEL_ADMIN_PORT": "-5", "SENTINEL_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "admin_port (env SENTINEL_ADMIN_PORT)" in result.stderr


def test_cli_serve_without_upstream_says_how(tmp_path: Path) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "SENTINEL_UPSTREAM_URL" in result.stderr and "--upstream" in result.stderr


def test_gpu_and_grafana_env_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = tmp_path / "grafana-token"
    token.write_text("glsa_from_file\n")
    for name, value in {
        "SENTINEL_GPU_SOURCES": '["nvml", "vllm", "dcgm"]',
        "SENTINEL_GPU_METRICS_URL": "http://vllm:8000/metrics",
        "SENTINEL_GPU_DCGM_URL": "http://dcgm-exporter:9400/metrics",
        "SENTINEL_GPU_OLLAMA_URL": "",  # compose's `${VAR:-}`: unset
        "SENTINEL_GPU_INTERVAL": "5",
        "SENTINEL_GRAFANA_URL": "http://grafana:3000",
        "SENTINEL_GRAFANA_TOKEN_FILE": str(token),
        "SENTINEL_GRAFANA_ELASTICSEARCH_URL": "http://elasticsearch:9200",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.gpu.sources == ["nvml", "vllm", "dcgm"] and settings.gpu.interval == 5
    assert settings.gpu.dcgm_url == "http://dcgm-exporter:9400/metrics" and settings.gpu.ollama_url is None
    assert settings.grafana.url == "http://grafana:3000"
    assert settings.grafana.token is not None and settings.grafana.token.get_secret_value() == "glsa_from_file"
    assert "glsa_from_file" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SENTINEL_GPU_SOURCES": '["auto", "nvml"]'}, "gpu.sources"),
        ({"SENTINEL_GPU_SOURCES": '["cuda"]'}, "gpu.sources"),
        ({"SENTINEL_GPU_SOURCES": '["dcgm"]'}, "SENTINEL_GPU_DCGM_URL"),
        ({"SENTINEL_GPU_METRICS_URL": "vllm:8000/metrics"}, "gpu.metrics_url"),
        ({"SENTINEL_GPU_INTERVAL": "0"}, "gpu.interval"),
    ],
)
def test_bad_gpu_setting_names_the_key(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings()
