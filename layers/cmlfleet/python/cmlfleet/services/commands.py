"""Operator commands and queries on workers, with access control.

Every change goes through the domain functions and is saved with its events in one
transaction, as EC2's own reports are. The EC2 call comes first: if AWS refuses, nothing
is saved and the worker stays as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cmlfleet.access import Action, may, may_see, visible_view
from cmlfleet.adapters.ec2 import (
    IMPORTABLE_TAG,
    STACK_TAG,
    WORKER_ID_TAG,
    CloudError,
    Ec2Fleet,
    LaunchSpec,
)
from cmlfleet.adapters.repository import (
    InstanceTakenError,
    TransientWriteError,
    WorkerRepository,
)
from cmlfleet.domain.certificate import awaiting_confirmation
from cmlfleet.domain.lifecycle import (
    IllegalTransitionError,
    request_start,
    request_stop,
    request_termination,
)
from cmlfleet.domain.status import WorkerStatus
from cmlfleet.domain.worker import Change, Worker, register_worker
from cmlfleet.events.catalog import WorkerView
from cmlfleet.events.envelope import envelopes
from cmlfleet.identity import Principal
from cmlfleet.ids import new_worker_id
from cmlfleet.services.changes import MAX_SAVE_ATTEMPTS, backoff, save_change
from cmlfleet.timeutil import utc_now


class WorkerNotFoundError(Exception):
    """No such worker, or one the caller may not see (they are told the same)."""


class ForbiddenError(Exception):
    """The caller sees the worker but their role does not allow the action."""


class AlreadyRegisteredError(Exception):
    """The instance is already a worker."""


class NotImportableError(Exception):
    """The instance cannot become a worker (it is terminated or on its way there)."""


class InstanceTypeNotAllowedError(Exception):
    """A launch asked for an instance type outside the allowed ones."""

    def __init__(self, instance_type: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"{instance_type} is not an allowed instance type; allowed: {', '.join(allowed)}"
        )
        self.instance_type, self.allowed = instance_type, allowed


@dataclass(frozen=True)
class LaunchDefaults:
    ami_id: str
    instance_type: str
    stack: str = "cmlfleet"  # the tag that makes an instance this stack's (IAM checks it)
    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()
    key_name: str | None = None
    instance_profile_arn: str | None = None
    detailed_monitoring: bool = False
    # What `create` may launch besides `instance_type` (IAM allows the same list): a stolen
    # admin token buys no p5.48xlarge.
    allowed_instance_types: frozenset[str] = frozenset()

    def checked_instance_type(self, wanted: str | None) -> str:
        """The type to launch: `wanted` (the default if None), refused unless allowed."""
        chosen = wanted or self.instance_type
        allowed = tuple(sorted(self.allowed_instance_types | {self.instance_type}))
        if chosen not in allowed:
            raise InstanceTypeNotAllowedError(chosen, allowed)
        return chosen


class WorkerCommands:
    def __init__(
        self,
        repository: WorkerRepository,
        fleet: Ec2Fleet,
        launch: LaunchDefaults,
        *,
        region: str | None,
        source: str,
        clock: Callable[[], datetime] = utc_now,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self._repository, self._fleet, self._launch = repository, fleet, launch
        self._region, self._source, self._clock = region, source, clock
        self._pause = pause

    # ---- queries -------------------------------------------------------------------------
    def list(
        self, principal: Principal, *, status: WorkerStatus | None = None, owner: str | None = None
    ) -> list[WorkerView]:
        workers = [
            w
            for w in self._repository.list_workers()
            if may_see(principal, w.owner, w.owner_sub)
            and (status is None or w.status == status)
            and (owner is None or w.owner == owner)
        ]
        workers.sort(key=lambda w: (w.name.lower(), w.worker_id))
        return [visible_view(principal, w.view()) for w in workers]

    def get(self, principal: Principal, worker_id: str) -> WorkerView:
        return visible_view(principal, self._visible(principal, worker_id).view())

    # ---- commands ------------------------------------------------------------------------
    def create(
        self,
        principal: Principal,
        *,
        name: str,
        owner: str | None,
        instance_type: str | None,
        owner_sub: str | None = None,
    ) -> WorkerView:
        """Launch a worker for `owner` (the caller if None); see `owner_sub_for` on its sub."""
        self._authorize(principal, Action.CREATE)
        chosen_type = self._launch.checked_instance_type(instance_type)
        worker_id, owner = new_worker_id(), owner or principal.username
        instance = self._fleet.launch(
            LaunchSpec(
                worker_id=worker_id,
                name=name,
                owner=owner,
                stack=self._launch.stack,
                ami_id=self._launch.ami_id,
                instance_type=chosen_type,
                subnet_id=self._launch.subnet_id,
                security_group_ids=self._launch.security_group_ids,
                key_name=self._launch.key_name,
                instance_profile_arn=self._launch.instance_profile_arn,
                detailed_monitoring=self._launch.detailed_monitoring,
            )
        )
        change = register_worker(
            worker_id=worker_id,
            name=name,
            owner=owner,
            owner_sub=owner_sub_for(principal, owner, owner_sub),
            now=self._clock(),
            instance_id=instance.instance_id,
            instance_type=instance.instance_type,
            ami_id=instance.ami_id,
            region=self._region,
            private_ip=instance.private_ip,
            tags=instance.tags,
        )
        try:
            self._save(change, expected_version=0)
        except Exception:
            # Never leave an instance running that no worker tracks: undo the launch.
            self._fleet.terminate(instance.instance_id)
            raise
        return change.worker.view()

    def import_instance(
        self,
        principal: Principal,
        *,
        instance_id: str,
        name: str | None,
        owner: str | None,
        owner_sub: str | None = None,
    ) -> WorkerView:
        """Adopt an opted-in instance for `owner` (the caller if None), as `create` does."""
        self._authorize(principal, Action.IMPORT)
        if self._repository.find_by_instance_id(instance_id) is not None:
            raise AlreadyRegisteredError(f"instance {instance_id} is already a worker")
        instance = self._fleet.describe(instance_id)
        if instance.state in ("shutting-down", "terminated"):
            raise NotImportableError(f"instance {instance_id} is {instance.state}")
        if instance.tags.get(IMPORTABLE_TAG) != "true":
            # The account owner opts an instance in; the API's IAM role may tag (and then
            # operate) only instances that carry this tag.
            raise NotImportableError(
                f"instance {instance_id} lacks the tag {IMPORTABLE_TAG}=true that allows import"
            )
        stack = instance.tags.get(STACK_TAG, self._launch.stack)
        if stack != self._launch.stack:
            raise NotImportableError(f"instance {instance_id} belongs to the stack {stack}")
        worker_id = new_worker_id()
        change = register_worker(
            worker_id=worker_id,
            name=name or _name_from_tag(instance.tags.get("Name")) or instance_id,
            owner=owner or principal.username,
            owner_sub=owner_sub_for(principal, owner or principal.username, owner_sub),
            now=self._clock(),
            instance_id=instance_id,
            instance_type=instance.instance_type,
            ami_id=instance.ami_id,
            region=self._region,
            ec2_state=instance.state,
            private_ip=instance.private_ip,
            tags=instance.tags,
        )
        # Its CML gets nothing but a TLS handshake until an admin confirms the certificate:
        # marked before the worker exists, so no collector can find it unmarked.
        self._repository.put_cml_certificate(awaiting_confirmation(worker_id), replacing=None)
        # Tag first: if AWS refuses, nothing is saved.
        self._fleet.tag(instance_id, self._worker_tags(worker_id))
        try:
            self._save(change, expected_version=0)
        except InstanceTakenError:
            # Another import won the race (and may have tagged before us): its tag stands.
            winner = self._repository.worker_of_instance(instance_id)
            if winner is not None:
                self._fleet.tag(instance_id, self._worker_tags(winner))
            raise AlreadyRegisteredError(f"instance {instance_id} is already a worker") from None
        return change.worker.view()

    def start(self, principal: Principal, worker_id: str) -> WorkerView:
        return self._command(principal, worker_id, Action.START, request_start, self._fleet.start)

    def stop(self, principal: Principal, worker_id: str) -> WorkerView:
        return self._command(principal, worker_id, Action.STOP, request_stop, self._fleet.stop)

    def terminate(self, principal: Principal, worker_id: str) -> WorkerView:
        return self._command(
            principal, worker_id, Action.TERMINATE, request_termination, self._fleet.terminate
        )

    # ---- internals -----------------------------------------------------------------------
    def _worker_tags(self, worker_id: str) -> dict[str, str]:
        return {WORKER_ID_TAG: worker_id, STACK_TAG: self._launch.stack}

    def _command(
        self,
        principal: Principal,
        worker_id: str,
        action: Action,
        decide: Callable[..., Change],
        perform: Callable[[str], None],
    ) -> WorkerView:
        worker = self._visible(principal, worker_id)
        self._authorize(principal, action)
        decide(worker, by=principal.username, now=self._clock())  # refuse before calling AWS
        assert worker.instance_id is not None
        try:
            perform(worker.instance_id)
        except CloudError as error:
            if error.conflicts_with_state:
                raise IllegalTransitionError(worker, action.value) from error
            raise

        def decide_now(current: Worker) -> Change | None:
            try:
                return decide(current, by=principal.username, now=self._clock())
            except IllegalTransitionError:
                return None  # EC2's own report got there first; nothing to add

        saved = save_change(
            self._repository, worker, decide_now, source=self._source, pause=self._pause
        )
        return (saved.worker or worker).view()

    def _visible(self, principal: Principal, worker_id: str) -> Worker:
        return find_visible(self._repository, principal, worker_id)

    def _authorize(self, principal: Principal, action: Action) -> None:
        authorize(principal, action)

    def _save(self, change: Change, *, expected_version: int) -> None:
        worker = change.worker
        events = envelopes(
            change.events,
            worker_id=worker.worker_id,
            owner=worker.owner,
            owner_sub=worker.owner_sub,
            version=worker.version,
            source=self._source,
        )
        # A new worker cannot race another writer, but its transaction can be throttled.
        for attempt in range(MAX_SAVE_ATTEMPTS):
            try:
                self._repository.save(worker, events, expected_version=expected_version)
                return
            except TransientWriteError:
                if attempt + 1 == MAX_SAVE_ATTEMPTS:
                    raise
                self._pause(backoff(attempt))


def find_visible(repository: WorkerRepository, principal: Principal, worker_id: str) -> Worker:
    """The worker, if this principal may see it; otherwise it does not exist for them."""
    worker = repository.get(worker_id)
    if worker is None or not may_see(principal, worker.owner, worker.owner_sub):
        raise WorkerNotFoundError(worker_id)
    return worker


def owner_sub_for(principal: Principal, owner: str, owner_sub: str | None) -> str | None:
    """The `sub` recorded for a new worker's owner: the one given (by an admin), else the
    caller's own when they are the owner, else None. An owner without a known sub is
    matched by name alone, so admins should pass `owner_sub` when naming another user."""
    if owner_sub is not None:
        return owner_sub
    return principal.subject if owner == principal.username else None


def authorize(principal: Principal, action: Action) -> None:
    if not may(principal, action):
        raise ForbiddenError(f"role {principal.role} may not {action.value.replace('_', ' ')}")


def _name_from_tag(tag: str | None) -> str | None:
    """A worker name from an EC2 `Name` tag: printable, at most 64 characters."""
    if not tag:
        return None
    cleaned = "".join(ch for ch in tag if ch.isprintable()).strip()[:64].strip()
    return cleaned or None
