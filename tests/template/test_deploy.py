"""What a deploy uses besides the template: samconfig.toml, the relay image, `make deploy`.

No Docker and no AWS here: the Dockerfile is read as text, samconfig.toml as TOML, ECR is
moto, docker is a fake shell that records commands, and the deploy script is also run with
`--dry-run` (it prints the commands it would run).
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from devstack.template import ROOT, load_sam_template
from relay.settings import RelaySettings

DOCKERFILE = ROOT / "relay_service" / "Dockerfile"
SCRIPT = ROOT / "scripts" / "deploy.py"
PYTHON = "public.ecr.aws/docker/library/python:3.12-slim"
PYTHON_REPO = "public.ecr.aws/docker/library/python"
DIGEST = "sha256:" + "a1" * 32
OTHER_DIGEST = "sha256:" + "b2" * 32


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
    # Liveness only: the bus check (/api/events/health) is the load balancer's.
    assert f"http://127.0.0.1:{port}/api/events/live" in healthcheck
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
    built = deploy.pinned_dockerfile(DOCKERFILE.read_text(), {PYTHON: f"{PYTHON_REPO}@{DIGEST}"})
    assert deploy.image_tag(built) == deploy.image_tag(built)
    assert deploy.image_tag(built).startswith("relay-")


def test_the_image_uri_is_added_to_the_saved_overrides_not_in_their_place() -> None:
    saved = 'EventTtlDays="7" RelayImageUri="old" DomainName="fleet.example.com"'
    assert deploy.with_image(saved, "1.dkr.ecr.r.amazonaws.com/cmlfleet-relay:t") == [
        'EventTtlDays="7"',
        'DomainName="fleet.example.com"',
        'RelayImageUri="1.dkr.ecr.r.amazonaws.com/cmlfleet-relay:t"',
    ]


def test_a_dry_run_pins_the_base_builds_pushes_then_builds_and_deploys_with_the_uri() -> None:
    result = run_deploy_script("--dry-run", "--config-env", "production")
    commands = printed_commands(result.stdout)
    assert [c[:2] for c in commands] == [
        ["docker", "pull"],
        ["docker", "image"],
        ["docker", "build"],
        ["docker", "login"],
        ["docker", "push"],
        [str(deploy.SAM), "build"],
        [str(deploy.SAM), "deploy"],
    ]
    assert commands[0][2:] == ["--platform", "linux/amd64", PYTHON]
    build, image = commands[2], commands[4][2]
    assert build[2:6] == ["--platform", "linux/amd64", "-f", "-"]
    assert build[-2:] == [image, str(ROOT)]
    assert f'RelayImageUri="{image}"' in commands[6]
    assert commands[6][2:6] == ["--config-env", "production", "--region", "us-east-1"]


def test_a_dry_run_says_its_digest_is_a_placeholder_and_needs_no_aws_packages() -> None:
    # boto3 and botocore made unimportable: `make check-template` may run without them.
    script = (
        "import runpy, sys; sys.modules['boto3'] = sys.modules['botocore'] = None; "
        "sys.argv = ['deploy.py', '--dry-run']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "dry run: base digests are placeholders" in result.stdout
    placeholder = f"{PYTHON_REPO}@{deploy.PLACEHOLDER_DIGEST}"
    assert f"base image {PYTHON} is {placeholder}" in result.stdout
    assert deploy.PLACEHOLDER_DIGEST == "sha256:dry-run-placeholder-not-resolved"


# ---- the base image: pinned by digest, hashed, built -------------------------------------

MULTI_STAGE = f"""\
FROM {PYTHON} AS build
RUN pip wheel .
FROM --platform=linux/amd64 node:22-alpine as assets
FROM build AS test
FROM scratch
COPY --from=assets /out /out
FROM debian@{DIGEST}
from {PYTHON}
"""


def test_every_stage_base_is_pinned_once_but_not_earlier_stages_scratch_or_pins() -> None:
    assert deploy.base_images(MULTI_STAGE) == [PYTHON, "node:22-alpine"]
    assert deploy.base_images(DOCKERFILE.read_text()) == [PYTHON]


def test_pinning_rewrites_the_from_images_and_nothing_else() -> None:
    pins = {PYTHON: f"{PYTHON_REPO}@{DIGEST}", "node:22-alpine": f"node@{OTHER_DIGEST}"}
    assert deploy.pinned_dockerfile(MULTI_STAGE, pins) == (
        f"FROM {PYTHON_REPO}@{DIGEST} AS build\n"
        "RUN pip wheel .\n"
        f"FROM --platform=linux/amd64 node@{OTHER_DIGEST} as assets\n"
        "FROM build AS test\n"
        "FROM scratch\n"
        "COPY --from=assets /out /out\n"
        f"FROM debian@{DIGEST}\n"
        f"from {PYTHON_REPO}@{DIGEST}\n"
    )


def test_a_build_argument_in_from_stops_the_deploy_rather_than_go_unpinned() -> None:
    with pytest.raises(SystemExit, match="a build argument names it"):
        deploy.base_images("ARG BASE=python:3.12\nFROM ${BASE}\n")


def test_a_base_digest_is_read_after_a_pull_for_the_tasks_platform() -> None:
    # Pulled from two registries, the image lists a digest for each: this one's is taken.
    shell = FakeShell(
        {
            PYTHON: [f"python@{OTHER_DIGEST}", f"{PYTHON_REPO}@{DIGEST}"],
            "node:22-alpine": [f"node@{OTHER_DIGEST}"],
        }
    )
    assert deploy.resolve_bases(MULTI_STAGE, shell) == {
        PYTHON: f"{PYTHON_REPO}@{DIGEST}",
        "node:22-alpine": f"node@{OTHER_DIGEST}",
    }
    assert shell.commands[:2] == [
        ["docker", "pull", "--platform", "linux/amd64", PYTHON],
        ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", PYTHON],
    ]
    assert [c[1] for c in shell.commands].count("pull") == 2


@pytest.mark.parametrize(
    ("image", "listed", "pinned"),
    [
        ("python:3.12-slim", "python", "python"),
        ("docker.io/library/python:3.12-slim", "python", "docker.io/library/python"),
        ("registry.example.com:5000/python", "registry.example.com:5000/python", None),
    ],
)
def test_a_docker_hub_or_port_qualified_name_finds_its_repo_digest(
    image: str, listed: str, pinned: str | None
) -> None:
    shell = FakeShell({image: [f"{listed}@{DIGEST}"]})
    assert deploy.resolve_bases(f"FROM {image}\n", shell) == {image: f"{pinned or image}@{DIGEST}"}


def test_a_base_image_docker_lists_no_digest_of_stops_the_deploy() -> None:
    with pytest.raises(SystemExit, match="no digest of"):
        deploy.resolve_bases(f"FROM {PYTHON}\n", FakeShell({PYTHON: None}))


def test_the_tag_changes_when_the_base_digest_does_and_not_otherwise() -> None:
    text = DOCKERFILE.read_text()
    tags = [
        deploy.image_tag(deploy.pinned_dockerfile(text, {PYTHON: f"{PYTHON_REPO}@{digest}"}))
        for digest in (DIGEST, DIGEST, OTHER_DIGEST)
    ]
    assert tags[0] == tags[1]
    assert tags[0] != tags[2]


def test_the_image_built_is_the_pinned_dockerfile_its_tag_was_hashed_from(ecr: Any) -> None:
    shell = FakeShell({PYTHON: [f"{PYTHON_REPO}@{DIGEST}"]})
    assert deploy.main([], shell=shell) == 0
    (built,) = [stdin for command, stdin in shell.piped if command[1] == "build"]
    assert built == DOCKERFILE.read_text().replace(f"FROM {PYTHON}", f"FROM {PYTHON_REPO}@{DIGEST}")
    image = shell.command("push")[2]
    assert image.endswith(f"/cmlfleet-relay:{deploy.image_tag(built)}")


# ---- ECR: the tag check, the region, the lifecycle policy --------------------------------


def test_a_tag_among_more_than_a_hundred_images_is_found_and_not_pushed_again(
    ecr: Any,
) -> None:
    create_repository(ecr)
    tags = [f"relay-{n:016x}" for n in range(150)]
    push_manifests(ecr, tags)
    list_like_ecr(ecr)
    shell = FakeShell()
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/cmlfleet-relay:{tags[-1]}"
    deploy.publish_image(ecr, shell, uri, "FROM scratch\n", keep_images=None)
    assert shell.commands == []


def test_a_tag_not_in_ecr_is_built_logged_in_and_pushed(ecr: Any) -> None:
    create_repository(ecr)
    push_manifests(ecr, ["relay-0000000000000001"])
    shell = FakeShell()
    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    uri = f"{registry}/cmlfleet-relay:relay-0000000000000002"
    deploy.publish_image(ecr, shell, uri, "FROM scratch\n", keep_images=None)
    assert [c[:2] for c in shell.commands] == [
        ["docker", "build"],
        ["docker", "login"],
        ["docker", "push"],
    ]
    assert shell.command("login")[2:] == ["--username", "AWS", "--password-stdin", registry]
    (password,) = [stdin for command, stdin in shell.piped if command[1] == "login"]
    assert password


@pytest.mark.parametrize(
    ("samconfig_region", "environ", "region"),
    [
        ("eu-west-1", {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-1"),
        (None, {"AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}, "us-west-2"),
        (None, {"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
        (None, {}, "us-east-1"),
    ],
)
def test_the_region_is_samconfigs_then_aws_region_then_aws_default_region_then_us_east_1(
    samconfig_region: str | None, environ: dict[str, str], region: str
) -> None:
    settings = {"stack_name": "cml-fleet"} | (
        {"region": samconfig_region} if samconfig_region else {}
    )
    assert deploy.deploy_region(settings, environ) == region


def test_the_image_and_the_stack_go_to_samconfigs_region_whatever_aws_region_says(
    ecr: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    shell = FakeShell({PYTHON: [f"{PYTHON_REPO}@{DIGEST}"]})
    deploy.main(["--config-env", "production"], shell=shell)
    ecr.describe_repositories(repositoryNames=["cmlfleet-relay"])  # in us-east-1
    elsewhere = boto3.client("ecr", region_name="eu-west-1")
    with pytest.raises(elsewhere.exceptions.RepositoryNotFoundException):
        elsewhere.describe_repositories(repositoryNames=["cmlfleet-relay"])
    image = shell.command("push")[2]
    assert image.startswith("123456789012.dkr.ecr.us-east-1.amazonaws.com/cmlfleet-relay:")
    sam_deploy = shell.command("deploy")
    assert sam_deploy[2:6] == ["--config-env", "production", "--region", "us-east-1"]
    assert f'RelayImageUri="{image}"' in sam_deploy


LIFECYCLE_POLICY_KEEPING_20 = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "Expire untagged images a day after their push",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 1,
            },
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": "Keep the newest 20 relay images",
            "selection": {
                "tagStatus": "tagged",
                "tagPrefixList": ["relay-"],
                "countType": "imageCountMoreThan",
                "countNumber": 20,
            },
            "action": {"type": "expire"},
        },
    ]
}


def test_a_new_repository_is_immutable_scanned_and_keeps_the_newest_20_relay_images(
    ecr: Any,
) -> None:
    deploy.ensure_repository(ecr, keep_images=None)
    (repository,) = ecr.describe_repositories(repositoryNames=["cmlfleet-relay"])["repositories"]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert lifecycle_policy(ecr) == LIFECYCLE_POLICY_KEEPING_20


def test_an_existing_repository_without_a_lifecycle_policy_gets_one(ecr: Any) -> None:
    create_repository(ecr)
    deploy.ensure_repository(ecr, keep_images=None)
    assert lifecycle_policy(ecr) == LIFECYCLE_POLICY_KEEPING_20


def test_a_repositorys_own_lifecycle_policy_stays_unless_keep_images_is_given(
    ecr: Any,
) -> None:
    create_repository(ecr)
    own = deploy.lifecycle_policy(50)
    ecr.put_lifecycle_policy(repositoryName="cmlfleet-relay", lifecyclePolicyText=json.dumps(own))
    deploy.ensure_repository(ecr, keep_images=None)
    assert lifecycle_policy(ecr) == own
    deploy.ensure_repository(ecr, keep_images=30)
    assert lifecycle_policy(ecr)["rules"][1]["selection"]["countNumber"] == 30


def test_keep_images_passes_to_the_policy_and_must_keep_at_least_one(ecr: Any) -> None:
    shell = FakeShell({PYTHON: [f"{PYTHON_REPO}@{DIGEST}"]})
    deploy.main(["--keep-images", "40"], shell=shell)
    assert lifecycle_policy(ecr)["rules"][1]["selection"]["countNumber"] == 40
    with pytest.raises(SystemExit):
        deploy.main(["--keep-images", "0", "--dry-run"])


# ---- helpers -----------------------------------------------------------------------------


class FakeShell:
    """Records the commands; `docker image inspect` answers from `repo_digests`."""

    def __init__(self, repo_digests: dict[str, list[str] | None] | None = None) -> None:
        self.repo_digests = repo_digests or {}
        self.piped: list[tuple[list[str], str]] = []
        self.commands: list[list[str]] = []

    def run(self, command: Sequence[str], stdin: Any = None) -> None:
        self.commands.append(list(command))
        if stdin is not None:
            self.piped.append((list(command), stdin.text))

    def output(self, command: Sequence[str]) -> str:
        self.commands.append(list(command))
        assert command[:3] == ["docker", "image", "inspect"], command
        return json.dumps(self.repo_digests[command[-1]])

    def command(self, verb: str) -> list[str]:
        (found,) = [c for c in self.commands if c[1] == verb]
        return found


@pytest.fixture
def ecr() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ecr", region_name="us-east-1")


def create_repository(ecr: Any) -> None:
    ecr.create_repository(repositoryName="cmlfleet-relay", imageTagMutability="IMMUTABLE")


def push_manifests(ecr: Any, tags: list[str]) -> None:
    """One image manifest per tag, each its own image (a config digest of its own)."""
    for number, tag in enumerate(tags):
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": 2,
                "digest": f"sha256:{number:064x}",
            },
            "layers": [],
        }
        ecr.put_image(
            repositoryName="cmlfleet-relay", imageManifest=json.dumps(manifest), imageTag=tag
        )


def list_like_ecr(ecr: Any) -> None:
    """moto lists every image at once; ECR's ListImages gives 100 and a nextToken."""

    def first_page(parsed: dict[str, Any], **_: Any) -> None:
        if len(parsed.get("imageIds", [])) > 100:
            parsed["imageIds"], parsed["nextToken"] = parsed["imageIds"][:100], "page-2"

    ecr.meta.events.register("after-call.ecr.ListImages", first_page)


def lifecycle_policy(ecr: Any) -> dict[str, Any]:
    text = ecr.get_lifecycle_policy(repositoryName="cmlfleet-relay")["lifecyclePolicyText"]
    return json.loads(text)


def run_deploy_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=True
    )


def printed_commands(stdout: str) -> list[list[str]]:
    """The `+ command` lines, as argv lists (a `# stdin: ...` note is a comment)."""
    return [
        shlex.split(line[2:], comments=True)
        for line in stdout.splitlines()
        if line.startswith("+ ")
    ]
