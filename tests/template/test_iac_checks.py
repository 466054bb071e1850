"""The IaC linters of `make check-iac` bite, and what checkov cannot see is checked here.

A deliberately bad template (a function whose policy grants all of IAM and reads a queue
as if it were a table, and a queue with no encryption) goes through the same path as
template.yaml: `scripts/lint-policies` (parliament on the transformed policies) and
checkov with the repository's `.checkov.yaml` on the transform. Both tools live in
`.venv-iac` (checkov pins its own boto3), which `make test` creates before pytest runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.template import ROOT, load_sam_template, transform_template

IAC_BIN = ROOT / ".venv-iac" / "bin"
needs_iac_venv = pytest.mark.skipif(
    not (IAC_BIN / "checkov").exists(),
    reason="no .venv-iac (checkov, parliament): `make check-iac` or `make test` creates it",
)
# Offline, as the Makefile runs checkov: no version check, no platform calls.
OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}
BAD_TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Resources:
  PlainQueue:
    Type: AWS::SQS::Queue
  CarelessFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/queue_reaper/
      Handler: app.lambda_handler
      Runtime: python3.12
      Policies:
        - Version: "2012-10-17"
          Statement:
            - Sid: ReadTheQueueAsATable
              Effect: Allow
              Action: dynamodb:GetItem
              Resource: !GetAtt PlainQueue.Arn
            # Not "*": parliament takes ~15 s to expand every action of every service.
            - Sid: AllOfIam
              Effect: Allow
              Action: iam:*
              Resource: "*"
"""


@dataclass(frozen=True)
class Linted:
    transformed: Path
    returncode: int
    output: str


@pytest.fixture(scope="module")
def bad_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("iac") / "bad.yaml"
    path.write_text(BAD_TEMPLATE)
    return path


@pytest.fixture(scope="module")
def linted(bad_template: Path) -> Linted:
    """scripts/lint-policies on the bad template, with no allow-list."""
    transformed = bad_template.with_name("bad.transformed.yaml")
    result = subprocess.run(
        [
            IAC_BIN / "python",
            ROOT / "scripts" / "lint-policies",
            "--template",
            bad_template,
            "--allowlist",
            bad_template.with_name("no-allowlist.yaml"),
            "--transformed-out",
            transformed,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return Linted(transformed, result.returncode, result.stdout + result.stderr)


@needs_iac_venv
def test_lint_policies_fails_on_an_action_whose_resource_can_never_match(linted: Linted) -> None:
    assert linted.returncode == 1, linted.output
    failing = [line for line in linted.output.splitlines() if line.startswith("FAIL")]
    assert any(
        "CarelessFunctionRole CarelessFunctionRolePolicy0 [ReadTheQueueAsATable]: "
        "RESOURCE_MISMATCH" in line
        for line in failing
    ), linted.output


@needs_iac_venv
def test_checkov_with_the_repositorys_skips_flags_the_generated_role_that_may_escalate(
    linted: Linted,
) -> None:
    result = subprocess.run(
        [
            IAC_BIN / "checkov",
            "--config-file",
            ROOT / ".checkov.yaml",
            "--file",
            linted.transformed,
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=90,
        cwd=linted.transformed.parent,
        env=os.environ | OFFLINE,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    results = (report[0] if isinstance(report, list) else report)["results"]
    failed = {(check["check_id"], check["resource"]) for check in results["failed_checks"]}
    # The role exists only in the transform: this is why checkov reads it too.
    assert ("CKV_AWS_110", "AWS::IAM::Role.CarelessFunctionRole") in failed


def unencrypted_queues(resources: dict[str, Any]) -> list[str]:
    """Queues with neither SQS-managed SSE nor a KMS key."""
    return [
        logical_id
        for logical_id, resource in resources.items()
        if resource.get("Type") == "AWS::SQS::Queue"
        and resource.get("Properties", {}).get("SqsManagedSseEnabled") is not True
        and "KmsMasterKeyId" not in resource.get("Properties", {})
    ]


def test_every_queue_is_encrypted_at_rest_which_checkov_cannot_tell(bad_template: Path) -> None:
    # .checkov.yaml skips CKV_AWS_27: it accepts only KmsMasterKeyId, not SqsManagedSseEnabled.
    cfn, _ = transform_template(load_sam_template(), "cmlfleet-iac-tests")
    assert unencrypted_queues(cfn["Resources"]) == []
    bad, _ = transform_template(load_sam_template(bad_template), "cmlfleet-iac-tests")
    assert unencrypted_queues(bad["Resources"]) == ["PlainQueue"]
