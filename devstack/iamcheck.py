"""Checking recorded AWS calls against the calling deployable's IAM policies.

A recording (devstack/awscalls.py) holds the distinct IAM requests a local stack's
deployables made; `check` evaluates each against the role its deployable runs as, with
iam-simulate (devstack/iamsim.py). A request fails if it is denied, if the evaluator
finds anything wrong with it (an action that does not exist, a resource ARN of a type
the action does not take, a condition key that does not apply), if no mapping knew how
to authorize its call, or if its caller has no role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack import awscalls, iampolicies, iamsim
from devstack.iampolicies import DeployablePolicies


@dataclass(frozen=True)
class Failure:
    """A recorded call its deployable's role may not make, and why, in words."""

    recorded: awscalls.RecordedRequest
    message: str


def check(
    requests: Sequence[awscalls.RecordedRequest],
    policies: Mapping[str, DeployablePolicies],
    *,
    timeout: float = 600.0,
) -> list[Failure]:
    """Every recorded request that its caller's policies do not allow."""
    failures: list[Failure] = []
    asked: list[tuple[awscalls.RecordedRequest, iamsim.IamRequest]] = []
    for index, recorded in enumerate(requests):
        role = policies.get(recorded.caller)
        if role is None:
            failures.append(Failure(recorded, f"{recorded.call}: {recorded.caller} has no role"))
        elif recorded.request.resource == awscalls.UNMAPPED:
            message = (
                f"{recorded.call}: no IAM mapping for {recorded.request.action}; add one to "
                "devstack/awscalls.MAPPERS (which action, which resource, which keys)"
            )
            failures.append(Failure(recorded, message))
        else:
            asked.append((recorded, simulator_request(str(index), recorded, role)))
    if not asked:
        return failures
    named = {role.role_id: named_policies(role) for role in policies.values()}
    results = iamsim.simulate(named, [request for _, request in asked], timeout=timeout)
    for (recorded, request), result in zip(asked, results, strict=True):
        if not result.allowed:
            message = iamsim.format_denial(recorded.call, request, result, named[request.role])
            failures.append(Failure(recorded, f"{recorded.caller} may not:\n{message}"))
    return failures


def check_recording(directory: Path) -> list[Failure]:
    """Check one local stack run: its recorded requests against its own policies."""
    policies = iampolicies.read(directory / awscalls.POLICIES_FILE)
    return check(awscalls.read_requests(directory), policies)


def recordings(root: Path) -> list[Path]:
    """Every run recorded under `root` (one directory per local stack started)."""
    return sorted(p.parent for p in root.glob(f"*/{awscalls.POLICIES_FILE}"))


def simulator_request(
    request_id: str, recorded: awscalls.RecordedRequest, role: DeployablePolicies
) -> iamsim.IamRequest:
    request = recorded.request
    return iamsim.IamRequest(
        id=request_id,
        role=role.role_id,
        principal=role.role_arn,
        action=request.action,
        resource=request.resource,
        account_id=_account(request.resource, role.role_arn),
        context=request.context_dict(),
    )


def named_policies(role: DeployablePolicies) -> list[iamsim.NamedPolicy]:
    return [iamsim.NamedPolicy(name, document) for name, document in role.policies]


def _account(resource: str, principal: str) -> str:
    """The account that owns the resource (an image ARN names none: the caller's, then)."""
    parts = resource.split(":")
    if len(parts) > 4 and parts[4]:
        return parts[4]
    return principal.split(":")[4]
