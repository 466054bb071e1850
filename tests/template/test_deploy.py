"""What a deploy uses besides the template: samconfig.toml, the relay image, `make deploy`.

No Docker and no AWS here: the Dockerfile is read as text, samconfig.toml as TOML, and the
deploy script is run with `--dry-run` (it prints the commands it would run).
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import tomllib
from types import ModuleType
from typing import Any

import pytest

from devstack.template import ROOT, load_sam_template
from relay.settings import RelaySettings

DOCKERFILE = ROOT / "relay_service" / "Dockerfile"


def load_deploy_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy", ROOT / "scripts" / "deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = load_deploy_script()


def instructions(stage: str | None = None) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), of the last stage by default."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    stages: list[list[list[str]]] = []
    for line in lines:
        if line[0] == "FROM":
            stages.append([])
        stages[-1].append(line)
    return stages[-1] if stage is None else stages[0]


# ---- the relay image --------------------------------------------------------------------


def test_the_relay_image_runs_python_312_slim_as_a_user_other_than_root() -> None:
    run_stage = instructions()
    assert run_stage[0][1].endswith("python:3.12-slim")
    users = [line[1] for line in run_stage if line[0] == "USER"]
    assert users
    assert not users[-1].startswith(("0", "root"))


def test_the_relay_image_copies_the_shared_package_the_relay_and_the_dashboard() -> None:
    copies = {
        line[1]: line[2] for line in instructions() if line[0] == "COPY" and "--from" not in line[1]
    }
    assert copies == {
        "layers/cmlfleet/python/cmlfleet": "/app/cmlfleet",
        "relay_service/relay": "/app/relay",
        "relay_service/dashboard": "/app/dashboard",
    }
    for source in copies:
        assert (ROOT / source).is_dir(), source
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for source in copies:
        assert f"!{source}/" in ignored, f".dockerignore keeps {source} out of the build"


def test_the_relay_image_checks_the_relays_health_on_the_port_it_listens_on() -> None:
    run_stage = instructions()
    (healthcheck,) = [" ".join(line) for line in run_stage if line[0] == "HEALTHCHECK"]
    port = RelaySettings.model_fields["relay_port"].default
    assert f"http://127.0.0.1:{port}/api/events/health" in healthcheck
    assert ["EXPOSE", str(port)] in run_stage
    assert run_stage[-1] == ["CMD", '["python",', '"-m",', '"relay"]']


def test_the_task_definition_checks_health_as_the_image_does() -> None:
    resources = load_sam_template()["Resources"]
    (container,) = resources["RelayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    command = container["HealthCheck"]["Command"]
    assert command[:2] == ["CMD", "python"]
    assert command[-1] in DOCKERFILE.read_text()


# ---- samconfig.toml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def samconfig() -> dict[str, Any]:
    return tomllib.loads((ROOT / "samconfig.toml").read_text())


@pytest.mark.parametrize("environment", ["default", "production"])
def test_each_samconfig_environment_deploys_its_own_stack_with_known_parameters(
    samconfig: dict[str, Any], environment: str
) -> None:
    settings = deploy.saved_settings(environment)
    assert settings["capabilities"].split() == ["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"]
    assert settings["confirm_changeset"] == "True"
    parameters = load_sam_template()["Parameters"]
    overrides = dict(item.split("=", 1) for item in shlex.split(settings["parameter_overrides"]))
    assert set(overrides) <= set(parameters)
    assert overrides["RelayQueuePrefix"] != parameters["RelayQueuePrefix"]["Default"]
    assert samconfig[environment]["validate"]["parameters"]["lint"] is True


def test_the_two_environments_differ_in_stack_and_relay_queues() -> None:
    default, production = deploy.saved_settings("default"), deploy.saved_settings("production")
    assert default["stack_name"] != production["stack_name"]
    assert default["parameter_overrides"] != production["parameter_overrides"]


# ---- make deploy ------------------------------------------------------------------------


def test_the_image_tag_follows_the_files_the_image_is_built_from() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in deploy.build_context_files()}
    assert "relay_service/Dockerfile" in files
    assert "relay_service/relay/__main__.py" in files
    assert "layers/cmlfleet/python/cmlfleet/identity.py" in files
    assert not any("__pycache__" in f for f in files)
    assert deploy.image_tag() == deploy.image_tag()
    assert deploy.image_tag().startswith("relay-")


def test_the_image_uri_is_added_to_the_saved_overrides_not_in_their_place() -> None:
    saved = 'EventTtlDays="7" RelayImageUri="old" DomainName="fleet.example.com"'
    assert deploy.with_image(saved, "1.dkr.ecr.r.amazonaws.com/cmlfleet-relay:t") == [
        'EventTtlDays="7"',
        'DomainName="fleet.example.com"',
        'RelayImageUri="1.dkr.ecr.r.amazonaws.com/cmlfleet-relay:t"',
    ]


def test_a_dry_run_builds_and_pushes_the_image_then_builds_and_deploys_with_its_uri() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy.py"),
            "--dry-run",
            "--config-env",
            "production",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = [
        shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")
    ]
    assert [c[:2] for c in commands] == [
        ["docker", "build"],
        ["docker", "push"],
        [str(deploy.SAM), "build"],
        [str(deploy.SAM), "deploy"],
    ]
    image = commands[1][2]
    assert image.endswith(f"/cmlfleet-relay:{deploy.image_tag()}")
    assert commands[0][2:4] == ["--platform", "linux/amd64"]
    assert f'RelayImageUri="{image}"' in commands[3]
    assert commands[3][2:4] == ["--config-env", "production"]
