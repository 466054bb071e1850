"""`make deploy`: build and push the relay image to ECR, then `sam deploy` with its URI.

    python scripts/deploy.py [--config-env production] [--guided] [--dry-run]

1. The image tag is a hash of everything the Dockerfile copies, so an unchanged relay is
   neither rebuilt nor pushed again (the repository's tags are immutable).
2. The ECR repository `cmlfleet-relay` is created on first use (scan on push).
3. `docker build --platform linux/amd64` (the task definition's platform), `docker login`
   with an ECR token, `docker push`.
4. `sam build`, then `sam deploy --config-env <env>` with the parameter overrides saved in
   samconfig.toml plus `RelayImageUri=<the image>` (on the command line SAM would replace
   the saved overrides, not add to them, so both are passed).

Needs Docker, AWS credentials (any way boto3 finds them) and the SAM CLI of `.venv-sam`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "relay_service" / "Dockerfile"
REPOSITORY = "cmlfleet-relay"
SAM = ROOT / ".venv-sam" / "bin" / "sam"


def build_context_files(root: Path = ROOT) -> list[Path]:
    """The Dockerfile and every file its COPY lines take from the repository."""
    files = [DOCKERFILE]
    for line in DOCKERFILE.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "COPY" and not parts[1].startswith("--from"):
            source = root / parts[1]
            found = [source] if source.is_file() else sorted(source.rglob("*"))
            files.extend(f for f in found if f.is_file() and _shipped(f))
    return files


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix != ".pyc"


def image_tag(root: Path = ROOT) -> str:
    """A tag that changes exactly when the image's inputs change."""
    digest = hashlib.sha256()
    for path in sorted(build_context_files(root)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return "relay-" + digest.hexdigest()[:16]


def saved_settings(config_env: str, samconfig: Path = ROOT / "samconfig.toml") -> dict[str, str]:
    """The deploy settings of one samconfig environment (global ones, then deploy's)."""
    config = tomllib.loads(samconfig.read_text())
    if config_env not in config:
        raise SystemExit(f"deploy: no [{config_env}] environment in {samconfig.name}")
    sections = config[config_env]
    merged: dict[str, str] = {}
    for command in ("global", "deploy"):
        merged |= {k: str(v) for k, v in sections.get(command, {}).get("parameters", {}).items()}
    return merged


def with_image(parameter_overrides: str, image_uri: str) -> list[str]:
    """The saved `Key="Value"` overrides with RelayImageUri set to `image_uri`."""
    pairs = [item.split("=", 1) for item in shlex.split(parameter_overrides)]
    kept = {key: value for key, value in pairs if key != "RelayImageUri"}
    # SAM parses each one as Key="Value": quoted, a value may hold spaces.
    quoted = [f'{key}="{_escaped(value)}"' for key, value in kept.items()]
    return [*quoted, f'RelayImageUri="{image_uri}"']


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def sam_commands(config_env: str, overrides: Sequence[str], guided: bool) -> list[list[str]]:
    deploy = [str(SAM), "deploy", "--config-env", config_env, "--parameter-overrides", *overrides]
    if guided:
        deploy.append("--guided")
    return [[str(SAM), "build", "--config-env", config_env], deploy]


def docker_commands(image_uri: str) -> list[list[str]]:
    build = ["docker", "build", "--platform", "linux/amd64", "-f", str(DOCKERFILE)]
    return [[*build, "-t", image_uri, str(ROOT)], ["docker", "push", image_uri]]


def run(commands: Iterable[list[str]], dry_run: bool, environment: dict[str, str]) -> None:
    for command in commands:
        print("+", shlex.join(command), flush=True)
        if not dry_run:
            subprocess.run(command, check=True, cwd=ROOT, env=environment)  # noqa: S603


def push_image(ecr: Any, registry: str, image_uri: str, tag: str, dry_run: bool) -> None:
    """Create the repository if needed; build, log in and push unless the tag is there."""
    if dry_run:
        run(docker_commands(image_uri), dry_run=True, environment=dict(os.environ))
        return
    client = ecr  # a boto3 ECR client
    try:
        client.describe_repositories(repositoryNames=[REPOSITORY])
    except client.exceptions.RepositoryNotFoundException:
        print(f"creating the ECR repository {REPOSITORY}")
        client.create_repository(
            repositoryName=REPOSITORY,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
        )
    images = client.list_images(repositoryName=REPOSITORY, filter={"tagStatus": "TAGGED"})[
        "imageIds"
    ]
    if any(image.get("imageTag") == tag for image in images):
        print(f"{image_uri} is already in ECR")
        return
    token = client.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    run(docker_commands(image_uri)[:1], dry_run=False, environment=dict(os.environ))
    login = ["docker", "login", "--username", user, "--password-stdin", registry]
    print("+", shlex.join(login), flush=True)
    subprocess.run(login, input=password.encode(), check=True)  # noqa: S603
    run(docker_commands(image_uri)[1:], dry_run=False, environment=dict(os.environ))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-env", default="default", help="samconfig.toml environment")
    parser.add_argument("--guided", action="store_true", help="first deploy: ask every setting")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    settings = saved_settings(args.config_env)
    region = os.environ.get("AWS_REGION") or settings.get("region") or "us-east-1"
    tag = image_tag()
    if args.dry_run:
        account, ecr = "123456789012", None
    else:
        import boto3  # only for a real deploy: --dry-run needs no AWS packages

        account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
        ecr = boto3.client("ecr", region_name=region)
    registry = f"{account}.dkr.ecr.{region}.amazonaws.com"
    image_uri = f"{registry}/{REPOSITORY}:{tag}"
    push_image(ecr, registry, image_uri, tag, args.dry_run)

    overrides = with_image(settings.get("parameter_overrides", ""), image_uri)
    environment = dict(os.environ) | {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    python312 = os.environ.get("PYTHON312_DIR")
    if python312:  # `sam build` looks for python3.12 on PATH
        environment["PATH"] = python312 + os.pathsep + environment.get("PATH", "")
    run(sam_commands(args.config_env, overrides, args.guided), args.dry_run, environment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
