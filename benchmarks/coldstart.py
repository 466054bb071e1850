"""Cold start of each function as `sam build` packages it: import time and package size.

    python -m benchmarks.coldstart [--runs 7] [--build-dir .aws-sam/build] [--check]

Reads the built template (`make bench-coldstart` runs `sam build` first). For each
function, a fresh `python3.12 -S -B -X importtime -c "import app"` runs in the function's
directory with only what Lambda would put on the path: the function's code, its layers'
`python/` directories, and a stand-in for the runtime's own boto3 (`.devstack/lambda-
runtime`). `-S` keeps this machine's site-packages out (a package missing from a layer
fails here, as it would in Lambda); `-B` writes no bytecode, as on Lambda's read-only
file system. The figure is the cumulative import time of the handler module, median of
`--runs` runs: the part of a cold start that is ours (the runtime's own start is not).

Sizes are those of the deployment packages: each function's zip, each layer's zip, and
everything unzipped (Lambda's limit is 250 MB for a function and its layers).
`--check` imports each handler once and fails if any import fails (make check-template).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / ".devstack" / "lambda-runtime"
# What the python3.12 runtime provides (the layer leaves it out); pinned as the tests pin it.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "urllib3")
# Enough environment for each handler module to import as it would in Lambda.
IMPORT_ENVIRONMENT = {
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
    "TABLE_NAME": "cmlfleet-workers",
    "IDEMPOTENCY_TABLE_NAME": "cmlfleet-idempotency",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:cmlfleet-events",
    "CML_AMI_ID": "ami-0c0ffee0c0ffee000",
    "OIDC_ISSUER": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example",
    "OIDC_AUDIENCE": "example-client",
    "POWERTOOLS_METRICS_NAMESPACE": "CMLFleet",
}


@dataclass(frozen=True)
class Measurement:
    function: str
    import_ms_median: float
    import_ms_runs: list[float]
    code_zip_bytes: int
    layers_zip_bytes: int
    unzipped_bytes: int


def python312() -> str:
    candidates = [shutil.which("python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [str(p) for p in sorted(pyenv.glob("3.12*/bin/python3.12"))]
    for candidate in candidates:
        probe = [candidate, "-c", "0"] if candidate else None
        found = probe and subprocess.run(probe, capture_output=True, check=False)  # noqa: S603
        if found and found.returncode == 0:
            return candidate
    raise SystemExit("coldstart: no python3.12 found (the functions' runtime)")


def ensure_runtime(python: str) -> Path:
    """The runtime's boto3 stand-in, installed once (pinned by requirements/constraints)."""
    marker = RUNTIME / ".installed"
    if not marker.exists():
        shutil.rmtree(RUNTIME, ignore_errors=True)
        pins = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        wanted = [p for p in pins if p.split("==")[0].lower() in RUNTIME_PACKAGES]
        install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        target = ["--target", str(RUNTIME)]  # compiled, as the runtime ships it
        subprocess.run([*install, *target, *wanted], check=True)  # noqa: S603 - our argv
        marker.touch()
    return RUNTIME


def built_functions(build_dir: Path) -> dict[str, dict[str, Any]]:
    """Function id → its code directory and layer directories, from the built template."""
    template = yaml_parse((build_dir / "template.yaml").read_text())
    resources = template["Resources"]
    functions = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        layers = [
            build_dir / resources[layer["Ref"]]["Properties"]["ContentUri"]
            for layer in template["Globals"]["Function"]["Layers"]
        ]
        functions[logical_id] = {
            "code": build_dir / resource["Properties"]["CodeUri"],
            "layers": layers,
            "module": resource["Properties"]["Handler"].rpartition(".")[0],
        }
    return functions


def import_ms(python: str, code: Path, layers: list[Path], module: str) -> float:
    """One fresh interpreter's cumulative import time of `module`, in milliseconds."""
    path = [str(code), *(str(layer / "python") for layer in layers), str(RUNTIME)]
    environment = IMPORT_ENVIRONMENT | {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(path),
        "AWS_LAMBDA_FUNCTION_NAME": code.name,
        "POWERTOOLS_SERVICE_NAME": code.name,
    }
    result = subprocess.run(  # noqa: S603 - our own argv, no shell
        [python, "-S", "-B", "-X", "importtime", "-c", f"import {module}"],
        cwd=code,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{code.name}: import {module} failed:\n{result.stderr[-3000:]}")
    for line in result.stderr.splitlines():
        fields = [field.strip() for field in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1]) / 1000
    raise RuntimeError(f"{code.name}: no import time reported for {module}")


def zip_size(directory: Path) -> tuple[int, int]:
    """(zipped, unzipped) bytes of a directory, as SAM packages it."""
    buffer, unzipped = io.BytesIO(), 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
                unzipped += path.stat().st_size
    return len(buffer.getvalue()), unzipped


def measure(build_dir: Path, runs: int) -> list[Measurement]:
    python = python312()
    ensure_runtime(python)
    sizes: dict[Path, tuple[int, int]] = {}
    results = []
    for function_id, spec in sorted(built_functions(build_dir).items()):
        for directory in [spec["code"], *spec["layers"]]:
            sizes.setdefault(directory, zip_size(directory))
        times = [
            import_ms(python, spec["code"], spec["layers"], spec["module"]) for _ in range(runs)
        ]
        results.append(
            Measurement(
                function=function_id,
                import_ms_median=round(statistics.median(times), 1),
                import_ms_runs=[round(t, 1) for t in times],
                code_zip_bytes=sizes[spec["code"]][0],
                layers_zip_bytes=sum(sizes[layer][0] for layer in spec["layers"]),
                unzipped_bytes=sum(sizes[d][1] for d in [spec["code"], *spec["layers"]]),
            )
        )
    return results


def table(results: list[Measurement]) -> str:
    lines = [
        "| function | import (median ms) | runs (ms) | code zip | layers zip | unzipped total |",
        "|---|---|---|---|---|---|",
    ]
    for m in results:
        lines.append(
            f"| {m.function} | {m.import_ms_median:.0f} | "
            f"{min(m.import_ms_runs):.0f} to {max(m.import_ms_runs):.0f} | "
            f"{m.code_zip_bytes / 1024:.1f} KiB | {m.layers_zip_bytes / 2**20:.1f} MiB | "
            f"{m.unzipped_bytes / 2**20:.1f} MiB |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="import each handler once")
    parser.add_argument("--out", type=Path, default=ROOT / ".devstack" / "coldstart.json")
    args = parser.parse_args()
    if not (args.build_dir / "template.yaml").is_file():
        raise SystemExit(f"coldstart: no {args.build_dir}/template.yaml: run `sam build` first")
    try:
        results = measure(args.build_dir, 1 if args.check else args.runs)
    except RuntimeError as error:
        print(f"coldstart: {error}", file=sys.stderr)
        return 1
    if args.check:
        print(f"coldstart: {len(results)} handlers import with only their packages on the path")
        return 0
    print(table(results))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps([asdict(m) for m in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
