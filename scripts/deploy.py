"""`make deploy`: build and push the relay image to ECR, then `sam deploy` with its URI.

    python scripts/deploy.py [--config-env production] [--guided] [--keep-images N] [--dry-run]

1. Every `FROM` image (not `FROM <earlier stage>`) is pinned to its current digest:
   `docker pull --platform linux/amd64 <image>`, then the digest from `docker image inspect
   --format '{{json .RepoDigests}}'`. Both are in every Docker install (buildx's
   `imagetools` is a plugin some installs lack; `docker manifest inspect` prints
   re-serialised JSON, not the digest), and the build needs the base pulled anyway.
2. The image tag is a hash of the Dockerfile with those pins and of every file it copies, so
   a relay whose inputs and bases are unchanged is neither rebuilt nor pushed again (the
   repository's tags are immutable), and a security update of the base image is a new tag.
   The pinned Dockerfile goes to `docker build` on stdin: the image pushed is the one hashed.
3. The ECR repository `cmlfleet-relay` is created on first use (scan on push). A repository
   without a lifecycle policy gets one (`--keep-images N` replaces any policy):
   - untagged images expire a day after their push. Deploys name images only by tag, and
     tags are immutable (never moved off an image), so an untagged image is what a push
     that did not finish left behind, and nothing runs it. The platform manifests inside a
     tagged image index are untagged too, but ECR keeps what a kept index references. A
     day, not less: a push uploads those manifests before the index that names them.
   - of the `relay-` images, the newest 20 (by push time) are kept. This cannot check what
     a stack runs; it is safe while each stack runs one of the newest 20 (both stacks share
     the repository, and a rollback needs the previous one). Deploy production at least
     once every 20 relay changes, or raise N. An expired image is pushed again by the next
     deploy of it, but until then ECS cannot start new tasks of it.
4. `docker build --platform linux/amd64` (the task definition's platform), `docker login`
   with an ECR token, `docker push`.
5. `sam build`, then `sam deploy --config-env <env> --region <region>` with the parameter
   overrides saved in samconfig.toml plus `RelayImageUri=<the image>` (on the command line
   SAM would replace the saved overrides, not add to them, so both are passed).

One region serves the push and the stack: samconfig's `region` for the environment, else
AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1. samconfig comes first because it is
where `sam deploy --config-env` puts the stack (SAM ranks it above the environment), and a
region left exported in a shell should not quietly make a second stack elsewhere.

`--dry-run` prints the commands and needs neither Docker, AWS nor boto3; its base digests
are labelled placeholders, so its tag is not the one a real deploy computes.
Needs Docker, AWS credentials (any way boto3 finds them) and the SAM CLI of `.venv-sam`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "relay_service" / "Dockerfile"
REPOSITORY = "cmlfleet-relay"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
PLATFORM = "linux/amd64"
TAG_PREFIX = "relay-"
KEEP_IMAGES = 20
DEFAULT_REGION = "us-east-1"
PLACEHOLDER_DIGEST = "sha256:dry-run-placeholder-not-resolved"


# ---- the shell: commands run for real, or are only printed in a dry run ----------------


class Piped(NamedTuple):
    """Text for a command's stdin; only `label` is printed (it may be a password)."""

    label: str
    text: str


class Shell(Protocol):
    def run(self, command: Sequence[str], stdin: Piped | None = None) -> None: ...

    def output(self, command: Sequence[str]) -> str | None:
        """The command's stdout; None in a dry run, which runs nothing."""


def _echo(command: Sequence[str], stdin: Piped | None = None) -> None:
    suffix = f"  # stdin: {stdin.label}" if stdin else ""
    print("+", shlex.join(command) + suffix, flush=True)


class SubprocessShell:
    """Runs each command from the repository root in `environment`, printed first."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self.environment = dict(environment)

    def run(self, command: Sequence[str], stdin: Piped | None = None) -> None:
        _echo(command, stdin)
        text = stdin.text.encode() if stdin else None
        subprocess.run(  # noqa: S603
            list(command), input=text, check=True, cwd=ROOT, env=self.environment
        )

    def output(self, command: Sequence[str]) -> str:
        _echo(command)
        return subprocess.run(  # noqa: S603
            list(command),
            check=True,
            cwd=ROOT,
            env=self.environment,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout


class PrintingShell:
    def run(self, command: Sequence[str], stdin: Piped | None = None) -> None:
        _echo(command, stdin)

    def output(self, command: Sequence[str]) -> None:
        _echo(command)


# ---- the image: its inputs, its pinned bases, its tag ----------------------------------

FROM_LINE = re.compile(r"^(\s*FROM\s+(?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)
STAGE_NAME = re.compile(r"\s+AS\s+(\S+)", re.IGNORECASE)


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


def base_images(dockerfile: str) -> list[str]:
    """Each image a stage starts from, once, in order: not earlier stages, scratch or pins."""
    stages: set[str] = set()
    images: list[str] = []
    for line in dockerfile.splitlines():
        match = FROM_LINE.match(line)
        if not match:
            continue
        image, rest = match.group(2), match.group(3)
        if "$" in image:
            raise SystemExit(f"deploy: cannot pin `FROM {image}`: a build argument names it")
        if image.lower() not in stages | {"scratch"} and "@" not in image and image not in images:
            images.append(image)
        if named := STAGE_NAME.match(rest):
            stages.add(named.group(1).lower())
    return images


def pinned_dockerfile(dockerfile: str, pins: Mapping[str, str]) -> str:
    """The Dockerfile with each `FROM <image>` in `pins` replaced by its pinned reference."""

    def pin(match: re.Match[str]) -> str:
        image = match.group(2)
        return match.group(1) + pins.get(image, image) + match.group(3)

    lines = dockerfile.splitlines(keepends=True)
    return "".join(FROM_LINE.sub(pin, line) for line in lines)


def resolve_bases(dockerfile: str, shell: Shell) -> dict[str, str]:
    """`repository@digest` of each base image as the registry serves it now."""
    pins = {}
    for image in base_images(dockerfile):
        shell.run(["docker", "pull", "--platform", PLATFORM, image])
        inspect = ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", image]
        listed = shell.output(inspect)
        digest = PLACEHOLDER_DIGEST if listed is None else _digest_of(image, json.loads(listed))
        pins[image] = f"{_repository(image)}@{digest}"
        print(f"  base image {image} is {pins[image]}", flush=True)
    return pins


def _digest_of(image: str, repo_digests: list[str] | None) -> str:
    # An image pulled from two registries lists a digest for each: take this one's.
    wanted = _familiar(_repository(image))
    for entry in repo_digests or []:
        name, _, digest = entry.partition("@")
        if _familiar(name) == wanted:
            return digest
    raise SystemExit(f"deploy: docker lists no digest of {image} (RepoDigests: {repo_digests})")


def _repository(image: str) -> str:
    """The image's name without tag or digest (a registry's `:port` is not a tag)."""
    bare = image.split("@")[0]
    name, colon, tag = bare.rpartition(":")
    return name if colon and "/" not in tag else bare


def _familiar(name: str) -> str:
    """`docker.io/library/python` as docker prints it: `python`."""
    for prefix in ("docker.io/", "index.docker.io/", "library/"):
        name = name.removeprefix(prefix)
    return name


def image_tag(built_dockerfile: str, root: Path = ROOT) -> str:
    """A tag that changes exactly when the image's inputs change (its bases included)."""
    digest = hashlib.sha256()
    for path in sorted(build_context_files(root)):
        content = built_dockerfile.encode() if path == DOCKERFILE else path.read_bytes()
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(content + b"\0")
    return TAG_PREFIX + digest.hexdigest()[:16]


# ---- ECR ---------------------------------------------------------------------------------


def lifecycle_policy(keep_images: int = KEEP_IMAGES) -> dict[str, Any]:
    """Untagged images go after a day; of the relay's tagged ones the newest N stay."""
    expire = {"type": "expire"}
    return {
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
                "action": expire,
            },
            {
                "rulePriority": 2,
                "description": f"Keep the newest {keep_images} relay images",
                "selection": {
                    "tagStatus": "tagged",
                    "tagPrefixList": [TAG_PREFIX],
                    "countType": "imageCountMoreThan",
                    "countNumber": keep_images,
                },
                "action": expire,
            },
        ]
    }


def ensure_repository(ecr: Any, keep_images: int | None) -> None:
    """Create the repository if needed; put the lifecycle policy if it has none (or asked)."""
    try:
        ecr.describe_repositories(repositoryNames=[REPOSITORY])
        has_policy = _has_lifecycle_policy(ecr)
    except ecr.exceptions.RepositoryNotFoundException:
        print(f"creating the ECR repository {REPOSITORY}", flush=True)
        ecr.create_repository(
            repositoryName=REPOSITORY,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
        )
        has_policy = False
    if has_policy and keep_images is None:
        return  # someone's policy, or ours: `--keep-images` is how to change it
    keep = KEEP_IMAGES if keep_images is None else keep_images
    print(f"putting the lifecycle policy of {REPOSITORY}: the newest {keep} kept", flush=True)
    text = json.dumps(lifecycle_policy(keep), indent=2)
    ecr.put_lifecycle_policy(repositoryName=REPOSITORY, lifecyclePolicyText=text)


def _has_lifecycle_policy(ecr: Any) -> bool:
    try:
        ecr.get_lifecycle_policy(repositoryName=REPOSITORY)
    except ecr.exceptions.LifecyclePolicyNotFoundException:
        return False
    return True


def tag_exists(ecr: Any, tag: str) -> bool:
    # One image asked for by tag: listing every image would need paging past 100.
    try:
        ecr.describe_images(repositoryName=REPOSITORY, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    return True


def build_and_push(shell: Shell, image_uri: str, dockerfile: str, login: tuple[str, str]) -> None:
    """Build from the pinned Dockerfile, log in to the image's registry as `login`, push."""
    label = f"{DOCKERFILE.relative_to(ROOT)} with FROM pinned by digest"
    build = ["docker", "build", "--platform", PLATFORM, "-f", "-", "-t", image_uri, str(ROOT)]
    shell.run(build, stdin=Piped(label, dockerfile))
    user, password = login
    registry = image_uri.split("/")[0]
    command = ["docker", "login", "--username", user, "--password-stdin", registry]
    shell.run(command, stdin=Piped("an ECR token", password))
    shell.run(["docker", "push", image_uri])


def publish_image(
    ecr: Any, shell: Shell, image_uri: str, dockerfile: str, keep_images: int | None
) -> None:
    """Build and push the image unless its tag is in ECR already."""
    ensure_repository(ecr, keep_images)
    if tag_exists(ecr, image_uri.rsplit(":", 1)[1]):
        print(f"{image_uri} is already in ECR", flush=True)
        return
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, password = base64.b64decode(token).decode().split(":", 1)
    build_and_push(shell, image_uri, dockerfile, (user, password))


# ---- SAM ---------------------------------------------------------------------------------


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


def deploy_region(settings: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """The one region of the image and the stack (the module docstring says why this order)."""
    for region in (settings.get("region"), environ.get("AWS_REGION")):
        if region:
            return region
    return environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def with_image(parameter_overrides: str, image_uri: str) -> list[str]:
    """The saved `Key="Value"` overrides with RelayImageUri set to `image_uri`."""
    pairs = [item.split("=", 1) for item in shlex.split(parameter_overrides)]
    kept = {key: value for key, value in pairs if key != "RelayImageUri"}
    # SAM parses each one as Key="Value": quoted, a value may hold spaces.
    quoted = [f'{key}="{_escaped(value)}"' for key, value in kept.items()]
    return [*quoted, f'RelayImageUri="{image_uri}"']


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def sam_commands(
    config_env: str, region: str, overrides: Sequence[str], guided: bool
) -> list[list[str]]:
    deploy = [str(SAM), "deploy", "--config-env", config_env, "--region", region]
    deploy += ["--parameter-overrides", *overrides]
    if guided:
        deploy.append("--guided")
    return [[str(SAM), "build", "--config-env", config_env], deploy]


# ---- the composition root ----------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-env", default="default", help="samconfig.toml environment")
    parser.add_argument("--guided", action="store_true", help="first deploy: ask every setting")
    parser.add_argument(
        "--keep-images",
        type=int,
        metavar="N",
        help=f"ECR keeps the newest N relay images (default {KEEP_IMAGES}, put only where the "
        "repository has no lifecycle policy; given, it replaces the policy)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.keep_images is not None and args.keep_images < 1:
        parser.error("--keep-images must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, shell: Shell | None = None) -> int:
    args = _arguments(argv)
    settings = saved_settings(args.config_env)
    region = deploy_region(settings, os.environ)
    if shell is None:
        shell = PrintingShell() if args.dry_run else SubprocessShell(_environment(region))
    image_uri = _publish(args, region, shell)
    overrides = with_image(settings.get("parameter_overrides", ""), image_uri)
    for command in sam_commands(args.config_env, region, overrides, args.guided):
        shell.run(command)
    return 0


def _publish(args: argparse.Namespace, region: str, shell: Shell) -> str:
    """The URI of the relay image in ECR, built and pushed if it is not there yet."""
    if args.dry_run:
        print(f"dry run: base digests are placeholders ({PLACEHOLDER_DIGEST}), so this tag")
        print("  is not a real deploy's; ECR is not asked about the repository or the tag")
    dockerfile = DOCKERFILE.read_text()
    dockerfile = pinned_dockerfile(dockerfile, resolve_bases(dockerfile, shell))
    repository = f"{REPOSITORY}:{image_tag(dockerfile)}"
    if args.dry_run:
        image_uri = f"123456789012.dkr.ecr.{region}.amazonaws.com/{repository}"
        build_and_push(shell, image_uri, dockerfile, ("AWS", ""))
        return image_uri
    import boto3  # only for a real deploy: --dry-run needs no AWS packages

    account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    image_uri = f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}"
    publish_image(
        boto3.client("ecr", region_name=region), shell, image_uri, dockerfile, args.keep_images
    )
    return image_uri


def _environment(region: str) -> dict[str, str]:
    """Ours, with the deploy's region for docker and SAM alike."""
    environment = dict(os.environ) | {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    python312 = os.environ.get("PYTHON312_DIR")
    if python312:  # `sam build` looks for python3.12 on PATH
        environment["PATH"] = python312 + os.pathsep + environment.get("PATH", "")
    return environment


if __name__ == "__main__":
    sys.exit(main())
