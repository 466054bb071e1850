"""Offline IAM check: evaluate AWS requests against a role's policies with iam-simulate.

`simulate` runs `devstack/iam/simulate.mjs` once for a whole batch; that script calls
`runSimulation` of the npm package `@cloud-copilot/iam-simulate` (pinned in
`devstack/iam/package-lock.json`; install with `npm ci --prefix devstack/iam`). Its licence is
AGPL-3.0-or-later: it is a test tool here, never bundled into a Lambda, a layer or the relay.

What iam-simulate 0.1.173 validates, and what the bridge adds (every error means decision
"Error", which a check must treat as a failure):
- policies are checked for syntax (Effect, element names, shapes) but not for meaning: an unknown
  action or an unknown condition operator in a policy is not an error, it simply never matches;
- the request's action must exist (`invalid.service`, `invalid.action`);
- the resource must be an ARN of one of the action's resource types (`no.resource.types`), with
  region and account in the places the type's ARN pattern wants them; a wildcard-only action
  (no resource types, e.g. `ec2:DescribeInstances`, `sts:GetCallerIdentity`) needs `"*"`
  (`must.use.wildcard`);
- a resource containing `*` for an action that has resource types is evaluated against the
  policies' matching patterns and is Allowed if any one is: lenient, so give concrete ARNs;
- context keys must apply to the action or its resource type, or be global `aws:` keys (all of
  which are accepted for every action). iam-simulate silently drops the others; the bridge
  reports them as errors, as it does a list for a single-valued key (iam-simulate would keep the
  first value) and a string for a multi-valued key such as `aws:TagKeys`;
- nothing is derived from the request: `aws:PrincipalArn`, `aws:PrincipalAccount`,
  `aws:RequestedRegion`, `aws:ResourceTag/...` are absent unless given in `context`.

Evaluation follows AWS: a key a condition needs but the request lacks fails plain operators
(`failedBecauseMissing`), satisfies `...IfExists`, `Null: true` and `ForAllValues:*`, and fails
`ForAnyValue:*`; an explicit Deny wins over any Allow; a principal in another account than
`account_id` makes the request cross-account, so the identity policy alone cannot allow it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from devstack.template import ROOT

Decision = Literal["Allowed", "ImplicitlyDenied", "ExplicitlyDenied", "Error"]
ContextValue = str | Sequence[str]

IAM_DIR = ROOT / "devstack" / "iam"
SCRIPT = IAM_DIR / "simulate.mjs"
INSTALL_HINT = "run `npm ci --prefix devstack/iam`"

# The equality operator for each iam-simulate context key type, for the suggested statement.
EQUALS_OPERATOR = {
    "String": "StringEquals",
    "ARN": "ArnEquals",
    "Numeric": "NumericEquals",
    "Bool": "Bool",
    "Date": "DateEquals",
    "IPAddress": "IpAddress",
    "Binary": "BinaryEquals",
}


class IamSimulatorError(RuntimeError):
    """Node or the pinned npm packages are missing, or the simulator process failed."""


@dataclass(frozen=True)
class NamedPolicy:
    """One identity policy of a role, as IAM shows it: a name and a policy document."""

    name: str
    document: Mapping[str, Any]


@dataclass(frozen=True)
class IamRequest:
    """One authorisation request: which role, as which principal, did what to which resource."""

    id: str
    role: str
    principal: str
    action: str
    resource: str
    account_id: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    resource_policy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StatementRef:
    """A statement of a named policy: its Sid, or its 1-based position when it has none."""

    policy: str
    sid: str


@dataclass(frozen=True)
class IamResult:
    """iam-simulate's answer for one request, with its errors and a line per statement."""

    id: str
    decision: Decision
    allowed_by: tuple[StatementRef, ...]
    denied_by: tuple[StatementRef, ...]
    errors: tuple[str, ...]
    explain: tuple[str, ...]
    context_types: Mapping[str, str]

    @property
    def allowed(self) -> bool:
        """True only for a clean Allow: any error counts as a failure."""
        return self.decision == "Allowed" and not self.errors


def simulate(
    policies: Mapping[str, Sequence[NamedPolicy]],
    requests: Sequence[IamRequest],
    *,
    timeout: float = 300.0,
) -> list[IamResult]:
    """Evaluate every request against its role's policies in one Node process, in order."""
    node = shutil.which("node")
    if node is None:
        raise IamSimulatorError(f"node is not on PATH (Node 20+ is needed); {INSTALL_HINT}")
    if not (IAM_DIR / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        raise IamSimulatorError(f"iam-simulate is not installed: {INSTALL_HINT}")
    payload = {
        "policies": {
            role: [{"name": p.name, "document": p.document} for p in named]
            for role, named in policies.items()
        },
        "requests": [_request_json(r) for r in requests],
    }
    try:
        completed = subprocess.run(
            [node, str(SCRIPT)],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise IamSimulatorError(f"simulate.mjs took over {timeout}s") from error
    if completed.returncode != 0:
        raise IamSimulatorError(f"simulate.mjs failed: {completed.stderr.strip()}")
    results = [_result(r) for r in json.loads(completed.stdout)["results"]]
    if [r.id for r in results] != [r.id for r in requests]:
        raise IamSimulatorError("simulate.mjs answered for other requests than it was given")
    return results


def needed_statement(
    request: IamRequest, policies: Sequence[NamedPolicy], result: IamResult | None = None
) -> dict[str, Any]:
    """The Allow statement that would grant this request, keyed on the role's condition keys."""
    used = {key.lower() for key in _condition_keys(policies)}
    types = result.context_types if result is not None else {}
    conditions: dict[str, dict[str, ContextValue]] = {}
    for key, value in request.context.items():
        if key.lower() not in used:
            continue
        key_type = types.get(key) or ("String" if isinstance(value, str) else "ArrayOfString")
        operator = EQUALS_OPERATOR.get(key_type.removeprefix("ArrayOf"), "StringEquals")
        if key_type.startswith("ArrayOf"):
            operator = f"ForAllValues:{operator}"
        conditions.setdefault(operator, {})[key] = value if isinstance(value, str) else list(value)
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Action": request.action,
        "Resource": request.resource,
    }
    if conditions:
        statement["Condition"] = conditions
    return statement


def format_denial(
    call: str, request: IamRequest, result: IamResult, policies: Sequence[NamedPolicy]
) -> str:
    """A failure message: the call, what IAM saw, why it was refused and what would allow it."""
    lines = [
        f"IAM {result.decision}: {call}",
        f"  role:     {request.role} ({request.principal})",
        f"  action:   {request.action}",
        f"  resource: {request.resource}",
        f"  context:  {json.dumps(dict(request.context), sort_keys=True)}",
    ]
    lines += [f"  error:    {error}" for error in result.errors]
    lines += ["  statements:"] + [f"    {line}" for line in result.explain]
    if result.decision == "ExplicitlyDenied":
        denied = ", ".join(f"{ref.policy}#{ref.sid}" for ref in result.denied_by)
        lines.append(f"  explicitly denied by {denied}: no Allow statement can override it")
    elif result.decision == "ImplicitlyDenied":
        statement = json.dumps(needed_statement(request, policies, result), indent=2)
        lines.append("  a statement that would allow it:")
        lines += [f"    {line}" for line in statement.splitlines()]
    return "\n".join(lines)


def _request_json(request: IamRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request.id,
        "role": request.role,
        "principal": request.principal,
        "action": request.action,
        "resource": request.resource,
        "accountId": request.account_id,
        "context": {k: v if isinstance(v, str) else list(v) for k, v in request.context.items()},
    }
    if request.resource_policy is not None:
        body["resourcePolicy"] = request.resource_policy
    return body


def _result(body: Mapping[str, Any]) -> IamResult:
    def refs(items: Sequence[Mapping[str, str]]) -> tuple[StatementRef, ...]:
        return tuple(StatementRef(policy=i["policy"], sid=i["sid"]) for i in items)

    return IamResult(
        id=body["id"],
        decision=cast(Decision, body["decision"]),
        allowed_by=refs(body["allowedBy"]),
        denied_by=refs(body["deniedBy"]),
        errors=tuple(body["errors"]),
        explain=tuple(body["explain"]),
        context_types=dict(body["contextTypes"]),
    )


def _condition_keys(policies: Sequence[NamedPolicy]) -> Iterator[str]:
    seen: set[str] = set()
    for policy in policies:
        statements = policy.document.get("Statement", [])
        for statement in [statements] if isinstance(statements, Mapping) else statements:
            for keys in statement.get("Condition", {}).values():
                for key in keys:
                    if key.lower() not in seen:
                        seen.add(key.lower())
                        yield key
