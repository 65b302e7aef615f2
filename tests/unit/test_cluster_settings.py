"""The cluster's settings: off unless etcd endpoints are set, each bad value refused in one line
naming the variable, TLS and auth in pairs, and the etcd password never shown nor passed to runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyscheduler.config.settings import ConfigError, LoadedSettings, load_settings
from tinyscheduler.core.goose import scrubbed_environ
from tinyscheduler.service.configuration import RESTART_ONLY


def load(tmp_path: Path, **env: str) -> LoadedSettings:
    return load_settings(env_file=None, cli={}, environ=env, cwd=tmp_path)


def test_without_endpoints_there_is_no_cluster(tmp_path: Path) -> None:
    s = load(tmp_path).settings
    assert not s.clustered and s.etcd_urls == [] and s.cluster == "default" and s.host_id == ""


def test_endpoints_are_base_urls_in_order(tmp_path: Path) -> None:
    s = load(tmp_path, TINYSCHEDULER_ETCD_ENDPOINTS=" http://10.0.0.1:2379/ ,https://etcd.example:2379,").settings
    assert s.clustered and s.etcd_urls == ["http://10.0.0.1:2379", "https://etcd.example:2379"]


@pytest.mark.parametrize(
    ("env", "start"),
    [
        ({"TINYSCHEDULER_ETCD_ENDPOINTS": "10.0.0.1:2379"}, "TINYSCHEDULER_ETCD_ENDPOINTS='10.0.0.1:2379': "),
        ({"TINYSCHEDULER_ETCD_ENDPOINTS": "http://e:2379/v3"}, "TINYSCHEDULER_ETCD_ENDPOINTS='http://e:2379/v3': "),
        ({"TINYSCHEDULER_HOST_ID": "web 1"}, "TINYSCHEDULER_HOST_ID='web 1': expected 1-64 letters"),
        ({"TINYSCHEDULER_CLUSTER": ""}, "TINYSCHEDULER_CLUSTER='': expected 1-64 letters"),
        ({"TINYSCHEDULER_CLUSTER": "a/b"}, "TINYSCHEDULER_CLUSTER='a/b': expected 1-64 letters"),
        ({"TINYSCHEDULER_CLUSTER_HEARTBEAT_SEC": "0"}, "TINYSCHEDULER_CLUSTER_HEARTBEAT_SEC='0': expected"),
        ({"TINYSCHEDULER_ETCD_CERT_FILE": "c.pem"}, "TINYSCHEDULER_ETCD_KEY_FILE"),
        ({"TINYSCHEDULER_ETCD_KEY_FILE": "k.pem"}, "TINYSCHEDULER_ETCD_KEY_FILE="),
        ({"TINYSCHEDULER_ETCD_PASSWORD": "s3cret"}, "TINYSCHEDULER_ETCD_PASSWORD="),
    ],
)
def test_a_bad_cluster_setting_is_one_line_naming_it(tmp_path: Path, env: dict[str, str], start: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **env)
    (problem,) = caught.value.problems
    assert problem.startswith(start), problem
    assert "s3cret" not in problem


def test_tls_files_resolve_under_the_base_path_and_go_in_pairs(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        TINYSCHEDULER_ETCD_CA_FILE="tls/ca.pem",
        TINYSCHEDULER_ETCD_CERT_FILE="tls/host.pem",
        TINYSCHEDULER_ETCD_KEY_FILE="/etc/tinyscheduler/host.key",
    ).settings
    assert s.etcd_ca_file == tmp_path / "tls/ca.pem" and s.etcd_cert_file == tmp_path / "tls/host.pem"
    assert s.etcd_key_file == Path("/etc/tinyscheduler/host.key")


def test_the_etcd_password_is_never_shown_and_no_run_inherits_it(tmp_path: Path) -> None:
    loaded = load(tmp_path, TINYSCHEDULER_ETCD_USER="scheduler", TINYSCHEDULER_ETCD_PASSWORD="s3cret")
    shown = {row["name"]: row["value"] for row in loaded.describe()}
    assert shown["etcd_user"] == "scheduler"
    assert shown["etcd_password"] != "s3cret" and "s3cret" not in repr(shown)
    environ = scrubbed_environ({**os.environ, "TINYSCHEDULER_ETCD_PASSWORD": "s3cret"})
    assert "TINYSCHEDULER_ETCD_PASSWORD" not in environ


def test_cluster_settings_change_only_with_a_restart() -> None:
    cluster = {"etcd_endpoints", "host_id", "cluster", "cluster_heartbeat_sec", "etcd_user", "etcd_password"}
    assert cluster | {"etcd_ca_file", "etcd_cert_file", "etcd_key_file"} <= set(RESTART_ONLY)


def test_a_daemon_on_one_host_loads_nothing_of_the_cluster_mode() -> None:
    code = (
        "import sys\n"
        "import tinyscheduler.service.scheduler, tinyscheduler.cli.run, tinyscheduler.cli.status\n"
        "print(sorted(m for m in sys.modules if m.endswith(('.etcd', '.cluster', '.membership', '.cluster_status'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
