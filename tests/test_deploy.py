"""The deploy files hold together, checked as far as this machine can check them offline: the
compose file against the compose spec, the Kubernetes manifests against Kubernetes' schemas,
the systemd units through systemd itself, the dashboard against the metrics Apex exports, and
the image's pins against pyproject.toml. No container is built here (no Docker engine)."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from connectors import order_flow, outbox

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _graceful_stop_bound_s() -> float:
    """The longest a SIGTERM'd run takes before it has exited by itself: the grace for orders still
    working, then the shipper's drain, which the worker waits for up to ``Shipper.stop``'s bound."""
    drain = inspect.signature(outbox.Shipper.stop).parameters["timeout_s"].default
    return order_flow.STOP_WAIT_S + drain


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)?", str(text))
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    run = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_runs_every_part_with_durable_redis_and_a_stop_past_the_bound() -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"redis", "clickhouse", "apex", "sim-okx", "sim-ibkr", "watchdog"} <= set(services)
    assert {"--appendonly", "yes"} <= set(services["redis"]["command"])
    assert _seconds(services["apex"]["stop_grace_period"]) > _graceful_stop_bound_s()
    for name in ("redis", "clickhouse"):
        image = services[name]["image"]
        assert re.search(r":\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned to a release"
    assert services["apex"]["environment"]["APEX_ENV"] == "paper"


def test_kubernetes_manifests_are_valid_and_keep_a_replicas_name_and_state() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "apex.yaml").read_text()) if d]
    for doc in docs:
        kv.validate(doc, "1.30.0", strict=True)
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["APEX_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["APEX_ENV"]["value"] == "paper"
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > _graceful_stop_bound_s()


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    sts = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "apex.yaml").read_text()) if d and d["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.30.0", strict=True)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify_and_stop_gracefully(tmp_path: Path) -> None:
    apex = Path(sys.executable).with_name("apex")
    for unit in (DEPLOY / "systemd").glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/apex/bin/apex", str(apex)))
    worker = (DEPLOY / "systemd" / "apex@.service").read_text()
    assert re.search(r"^KillMode=mixed$", worker, re.M)
    assert int(re.search(r"^TimeoutStopSec=(\d+)$", worker, re.M).group(1)) > _graceful_stop_bound_s()
    run = subprocess.run(["systemd-analyze", "verify", "./apex@worker-1.service", "./apex-watchdog.service"],
                         cwd=tmp_path, capture_output=True, text=True)
    # systemd says what it ignored on stderr and still exits 0: both must be silent
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr


def test_the_image_installs_locked_versions_that_satisfy_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[name.lower().replace("_", "-")] = version
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{req.name} is not in deploy/requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{req.name} {lock[name]} outside {req.specifier}"
        for extra in req.extras:  # clickhouse-connect[chdb], redis[hiredis]: the extra's package too
            assert {"chdb": "chdb", "hiredis": "hiredis"}[extra] in lock


def test_the_image_runs_as_a_user_from_a_pinned_base() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "--no-deps -r deploy/requirements.lock" in text


def test_dashboard_is_current_and_queries_only_exported_metrics() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_dashboard
    finally:
        sys.path.pop(0)
    on_disk = json.loads((DEPLOY / "grafana" / "apex.json").read_text())
    assert on_disk == gen_dashboard.dashboard(), "deploy/grafana/apex.json is stale: run scripts/gen_dashboard.py"
    used = set()
    for panel in on_disk["panels"]:
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|sum|count)$", "", m)
                     for m in re.findall(r"\b(apex_[a-z_]+)", target["expr"])}
    assert used <= exported_metrics(), sorted(used - exported_metrics())



def exported_metrics() -> set[str]:
    """Every metric name Apex's registry exposes (a counter's ``_total`` as Prometheus reads it)."""
    from connectors.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names
