"""``deploy/docker-compose.yml`` agrees with the Dockerfile, the command line and the files it
mounts (docker cannot run here: what can be checked without it is checked)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from deploy_support import ALERT_RULES, COMPOSE, DASHBOARD, DEPLOY, PROMETHEUS_CONFIG
from online_gim.services.cli import build_parser
from online_gim.services.http import TOKEN_ENV

ROOT = DEPLOY.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile() -> dict[str, str]:
    """The Dockerfile's instructions (the last of each kind), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    instructions = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions[keyword.upper()] = rest.strip()
    return instructions


def bind_mounts(service: dict) -> dict[str, Path]:
    """``{container path: host path}`` of a service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def container_port(service: dict) -> int:
    (mapping,) = service["ports"]
    return int(mapping.rsplit(":", 1)[1])


def test_every_bind_mount_and_the_build_context_exist(compose):
    services = compose["services"]
    assert set(services) == {"online-gim", "prometheus", "grafana"}
    build = services["online-gim"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT and (ROOT / build["dockerfile"]).is_file()
    for name, service in services.items():
        for source in bind_mounts(service).values():
            assert source.exists(), f"{name} mounts {source}, which does not exist"
        for volume in service.get("volumes", []):
            if not volume.startswith("."):
                assert volume.split(":")[0] in compose["volumes"], f"{name}: undeclared volume {volume}"


def test_the_learner_service_runs_the_image_with_a_command_the_cli_accepts(compose):
    service = compose["services"]["online-gim"]
    docker = dockerfile()
    assert json.loads(docker["ENTRYPOINT"]) == ["online-gim"]
    command = service["command"]
    args = build_parser().parse_args(command)  # exits (SystemExit) on an unknown option
    assert args.command == "listen"
    host, port = args.http.rsplit(":", 1)
    assert host == "0.0.0.0" and int(port) == container_port(service) == int(docker["EXPOSE"])
    # the state directory is on the volume, in the folder the image makes writable for its user
    (volume,) = service["volumes"]
    data = volume.split(":")[1]
    assert PurePosixPath(args.state).is_relative_to(data)
    assert f"chown {docker['USER']} {data}" in (ROOT / "Dockerfile").read_text()
    assert TOKEN_ENV in service["environment"]  # 0.0.0.0 needs a token
    assert compose["secrets"]["online_gim_token"]["environment"] == TOKEN_ENV


def test_prometheus_scrapes_the_learner_with_the_token_and_loads_the_rules(compose):
    service = compose["services"]["prometheus"]
    mounts = bind_mounts(service)
    config_path = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    assert mounts[config_path] == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:  # relative to the configuration's folder
        assert mounts[str(PurePosixPath(config_path).parent / rule_file)] == ALERT_RULES
    (job,) = config["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"online-gim:{container_port(compose['services']['online-gim'])}"
    assert job["authorization"]["credentials_file"] == "/run/secrets/" + "online_gim_token"
    assert "online_gim_token" in service["secrets"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    service = compose["services"]["grafana"]
    mounts = bind_mounts(service)
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus_port = container_port(compose["services"]["prometheus"])
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "online-gim.yml").read_text())["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = [target for target, path in mounts.items() if PurePosixPath(target).parent == folder]
    assert [mounts[target] for target in dashboards] == [DASHBOARD]
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert datasource["query"] == source["type"]
