"""What a principal may see and do. One place, enforced by every route (and the relay).

- `admin` may do everything;
- `manager` sees every worker and may start, stop and refresh labs;
- `user` sees only the workers they own (by name and `sub`), with AWS-internal fields
  masked, and may not act.
A worker a principal may not see does not exist for them (404, not 403).
"""

from __future__ import annotations

from enum import StrEnum

from cmlfleet.events.catalog import WorkerView
from cmlfleet.identity import Principal, Role


class Action(StrEnum):
    CREATE = "create"
    IMPORT = "import"
    START = "start"
    STOP = "stop"
    TERMINATE = "terminate"
    REFRESH_LABS = "refresh_labs"
    TRUST_CML_CERTIFICATE = "trust_cml_certificate"  # confirm or re-pin (admin only)


ALLOWED: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.MANAGER: frozenset({Action.START, Action.STOP, Action.REFRESH_LABS}),
    Role.USER: frozenset(),
}

# Fields of the worker view a `user` does not get: they describe the AWS account.
MASKED_FOR_USERS = ("instance_id", "ami_id", "private_ip", "region")


def may(principal: Principal, action: Action) -> bool:
    return action in ALLOWED[principal.role]


def may_see(principal: Principal, owner: str, owner_sub: str | None = None) -> bool:
    """Admins and managers see every worker; a user the workers owned by their name and,
    when the owner's `sub` is known, their sub too: a user name given again later (bob
    deleted, a new bob created) does not inherit the old one's workers. A worker whose
    owner's sub is not known is matched by name alone."""
    if principal.sees_everything:
        return True
    return owner == principal.username and (owner_sub is None or owner_sub == principal.subject)


def visible_view(principal: Principal, view: WorkerView) -> WorkerView:
    """The view as this principal may see it (masked for users)."""
    if principal.sees_everything:
        return view
    return view.model_copy(update=dict.fromkeys(MASKED_FOR_USERS) | {"tags": {}})
