"""Where workers and their events are kept: the DynamoDB table, and a fake for tests.

Table layout (one table, `pk`/`sk`):
- worker:  pk=`WORKER`, sk=<worker id>, with `version` for optimistic concurrency and
  `instance_id` indexed by the `ByInstanceId` GSI;
- event:   pk=`EVENTS#<yyyymmddHH>`, sk=<event id> (time-ordered), the whole CloudEvent
  in `event`, and `expires_at` for TTL. These items are the outbox: the table's stream
  feeds the publisher, and the same items are the event log the relay replays from;
- throttle: pk=`THROTTLE`, sk=`labs#<worker id>`, the last manual labs refresh (TTL);
- instance: pk=`INSTANCE`, sk=<instance id>, written with a new worker: one worker each;
- CML certificate: pk=`CMLCERT`, sk=<worker id>, the worker's pinned TLS certificate
  (`domain/certificate.py`), kept beside the worker item, which a save replaces whole.
A worker and the events of its change are written in one `TransactWriteItems`.
(Stream tickets live in the same table too: `adapters/tickets.py`.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from cmlfleet.domain.certificate import CmlCertificate
from cmlfleet.domain.worker import Worker
from cmlfleet.events.envelope import CloudEvent

WORKER_PK = "WORKER"
THROTTLE_PK = "THROTTLE"
INSTANCE_PK = "INSTANCE"
CML_CERTIFICATE_PK = "CMLCERT"
EVENTS_PK_PREFIX = "EVENTS#"
INSTANCE_INDEX = "ByInstanceId"
# Cancellation reasons that say "not now" rather than "not so" (DynamoDB API reference,
# TransactionCanceledException): another transaction on the same item, or throttling.
TRANSIENT_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


class ConcurrentModificationError(RuntimeError):
    """The worker changed since it was read; reload it and apply the change again."""


class TransientWriteError(ConcurrentModificationError):
    """DynamoDB cancelled the transaction for a conflict with another one in flight, or
    throttled it: nothing was written, and the same change may be tried again shortly.

    A kind of concurrent modification: the caller re-reads and re-decides the same way,
    after a pause (botocore's own retries never retry a cancelled transaction)."""


class InstanceTakenError(RuntimeError):
    """Another worker already has this EC2 instance."""


class CmlCertificateStore(Protocol):
    """The port for the workers' pinned CML certificates (not part of the worker)."""

    def get_cml_certificate(self, worker_id: str) -> CmlCertificate | None: ...

    def put_cml_certificate(
        self, certificate: CmlCertificate, *, replacing: CmlCertificate | None
    ) -> bool: ...


class WorkerRepository(CmlCertificateStore, Protocol):
    """The port the services use to load and save workers with their events."""

    def get(self, worker_id: str) -> Worker | None: ...

    def find_by_instance_id(self, instance_id: str) -> Worker | None: ...

    def list_workers(self) -> list[Worker]: ...

    def save(
        self, worker: Worker, events: Sequence[CloudEvent], *, expected_version: int
    ) -> None: ...

    def claim_labs_refresh(self, worker_id: str, now: float, min_interval: float) -> bool: ...

    def worker_of_instance(self, instance_id: str) -> str | None: ...


def event_partition(event: CloudEvent) -> str:
    """The event log partition of an event: one per hour of event time."""
    return hour_partition(event.time)


def hour_partition(moment: datetime) -> str:
    """The event log partition of the hour `moment` (a UTC time) falls in."""
    return EVENTS_PK_PREFIX + moment.strftime("%Y%m%d%H")


class DynamoDbWorkerRepository:
    """Workers and their outbox events in one DynamoDB table."""

    def __init__(self, table_name: str, client: Any, event_ttl: timedelta) -> None:
        self._table = table_name
        self._client = client
        self._event_ttl = event_ttl

    def get(self, worker_id: str) -> Worker | None:
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": WORKER_PK}, "sk": {"S": worker_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return _worker_from_item(item) if item else None

    def find_by_instance_id(self, instance_id: str) -> Worker | None:
        response = self._client.query(
            TableName=self._table,
            IndexName=INSTANCE_INDEX,
            KeyConditionExpression="instance_id = :instance",
            ExpressionAttributeValues={":instance": {"S": instance_id}},
            Limit=1,
        )
        items = response.get("Items", [])
        return _worker_from_item(items[0]) if items else None

    def worker_of_instance(self, instance_id: str) -> str | None:
        """The id of the worker that claimed the instance (strongly consistent)."""
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": INSTANCE_PK}, "sk": {"S": instance_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return str(item["worker_id"]["S"]) if item else None

    def list_workers(self) -> list[Worker]:
        workers: list[Worker] = []
        paginator = self._client.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": WORKER_PK}},
        ):
            workers.extend(_worker_from_item(item) for item in page.get("Items", []))
        return workers

    def save(self, worker: Worker, events: Sequence[CloudEvent], *, expected_version: int) -> None:
        """Write the worker and its events atomically, if the stored version is as expected."""
        if worker.version <= expected_version:
            raise ValueError("a saved change must bump the worker's version")
        operations = [self._put_worker(worker, expected_version)]
        claims_instance = expected_version == 0 and worker.instance_id is not None
        if claims_instance:
            # One instance, one worker: the GSI lookup before an import is not atomic,
            # this conditional write in the same transaction is.
            operations.append(self._claim_instance(worker))
        operations += [self._put_event(event) for event in events]
        try:
            self._client.transact_write_items(TransactItems=operations)
        except ClientError as error:
            reasons = _cancellation_reasons(error)
            if reasons.get(0) == "ConditionalCheckFailed":
                raise ConcurrentModificationError(
                    f"worker {worker.worker_id} is no longer at version {expected_version}"
                ) from error
            if claims_instance and reasons.get(1) == "ConditionalCheckFailed":
                raise InstanceTakenError(
                    f"instance {worker.instance_id} is already a worker"
                ) from error
            transient = sorted(set(reasons.values()) & TRANSIENT_CANCELLATIONS)
            if transient:
                raise TransientWriteError(
                    f"worker {worker.worker_id}: transaction cancelled ({', '.join(transient)})"
                ) from error
            raise

    def _claim_instance(self, worker: Worker) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": _serialize(
                    {
                        "pk": INSTANCE_PK,
                        "sk": worker.instance_id,
                        "kind": "instance",
                        "worker_id": worker.worker_id,
                    }
                ),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def claim_labs_refresh(self, worker_id: str, now: float, min_interval: float) -> bool:
        """Atomically take the right to refresh the worker's labs now; False if too soon.

        One conditional write decides, so two callers at once cannot both pass. The claim
        is an item of its own (with a TTL): a worker write, which replaces the whole worker
        item, must not wipe it.
        """
        try:
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": THROTTLE_PK},
                    "sk": {"S": f"labs#{worker_id}"},
                    "kind": {"S": "throttle"},
                    "claimed_at": {"N": repr(now)},
                    "expires_at": {"N": str(int(now + min_interval) + 60)},
                },
                ConditionExpression="attribute_not_exists(pk) OR claimed_at <= :cutoff",
                ExpressionAttributeValues={":cutoff": {"N": repr(now - min_interval)}},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def get_cml_certificate(self, worker_id: str) -> CmlCertificate | None:
        response = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": CML_CERTIFICATE_PK}, "sk": {"S": worker_id}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return CmlCertificate.model_validate(_deserialize(item)) if item else None

    def put_cml_certificate(
        self, certificate: CmlCertificate, *, replacing: CmlCertificate | None
    ) -> bool:
        """Store the pin if the stored one is still `replacing`; False if it changed.

        A compare-and-set on (state, fingerprint): when two collectors make first contact
        at once, the first pin stays, and a confirmation applies only to the pin confirmed.
        """
        key = {"pk": CML_CERTIFICATE_PK, "sk": certificate.worker_id, "kind": "cml_certificate"}
        item = _serialize(key | certificate.model_dump(mode="json", exclude_none=True))
        try:
            self._client.put_item(TableName=self._table, Item=item, **_pin_condition(replacing))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _put_worker(self, worker: Worker, expected_version: int) -> dict[str, Any]:
        put: dict[str, Any] = {"TableName": self._table, "Item": _worker_to_item(worker)}
        if expected_version == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "version = :expected"
            put["ExpressionAttributeValues"] = {":expected": {"N": str(expected_version)}}
        return {"Put": put}

    def _put_event(self, event: CloudEvent) -> dict[str, Any]:
        expires_at = int((event.time + self._event_ttl).timestamp())
        item = {
            "pk": event_partition(event),
            "sk": event.id,
            "kind": "event",
            "type": event.type,
            "worker_id": event.subject,
            "owner": event.owner,
            "event": event.to_json(),
            "expires_at": expires_at,
        }
        return {
            "Put": {
                "TableName": self._table,
                "Item": _serialize(item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }


@dataclass
class InMemoryWorkerRepository:
    """A fake with the same contract as the DynamoDB one, for service tests."""

    workers: dict[str, Worker] = field(default_factory=dict)
    events: list[CloudEvent] = field(default_factory=list)
    claims: dict[str, float] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)
    certificates: dict[str, CmlCertificate] = field(default_factory=dict)

    def get(self, worker_id: str) -> Worker | None:
        return self.workers.get(worker_id)

    def find_by_instance_id(self, instance_id: str) -> Worker | None:
        return next((w for w in self.workers.values() if w.instance_id == instance_id), None)

    def list_workers(self) -> list[Worker]:
        return list(self.workers.values())

    def worker_of_instance(self, instance_id: str) -> str | None:
        return next(
            (w.worker_id for w in self.workers.values() if w.instance_id == instance_id), None
        )

    def save(self, worker: Worker, events: Sequence[CloudEvent], *, expected_version: int) -> None:
        if worker.version <= expected_version:
            raise ValueError("a saved change must bump the worker's version")
        current = self.workers.get(worker.worker_id)
        if (current.version if current else 0) != expected_version:
            raise ConcurrentModificationError(worker.worker_id)
        if expected_version == 0 and worker.instance_id is not None:
            if worker.instance_id in self.instances:
                raise InstanceTakenError(worker.instance_id)
            self.instances.add(worker.instance_id)
        self.workers[worker.worker_id] = worker
        self.events.extend(events)

    def claim_labs_refresh(self, worker_id: str, now: float, min_interval: float) -> bool:
        last = self.claims.get(worker_id)
        if last is not None and now - last < min_interval:
            return False
        self.claims[worker_id] = now
        return True

    def get_cml_certificate(self, worker_id: str) -> CmlCertificate | None:
        return self.certificates.get(worker_id)

    def put_cml_certificate(
        self, certificate: CmlCertificate, *, replacing: CmlCertificate | None
    ) -> bool:
        current = self.certificates.get(certificate.worker_id)
        if (current is None) != (replacing is None) or (
            current is not None
            and replacing is not None
            and (current.state, current.sha256) != (replacing.state, replacing.sha256)
        ):
            return False
        self.certificates[certificate.worker_id] = certificate
        return True


def _pin_condition(replacing: CmlCertificate | None) -> dict[str, Any]:
    """The condition that the stored pin is still `replacing` (or that there is none)."""
    if replacing is None:
        return {"ConditionExpression": "attribute_not_exists(pk)"}
    same_state = {"ExpressionAttributeNames": {"#state": "state"}}
    if replacing.sha256 is None:
        return same_state | {
            "ConditionExpression": "#state = :state AND attribute_not_exists(sha256)",
            "ExpressionAttributeValues": {":state": {"S": replacing.state}},
        }
    return same_state | {
        "ConditionExpression": "#state = :state AND sha256 = :sha256",
        "ExpressionAttributeValues": {
            ":state": {"S": replacing.state},
            ":sha256": {"S": replacing.sha256},
        },
    }


def _worker_to_item(worker: Worker) -> dict[str, Any]:
    attributes = worker.model_dump(mode="json", exclude_none=True)
    return _serialize({"pk": WORKER_PK, "sk": worker.worker_id, "kind": "worker", **attributes})


def _worker_from_item(item: dict[str, Any]) -> Worker:
    return Worker.model_validate(_deserialize(item))


def _serialize(values: dict[str, Any]) -> dict[str, Any]:
    # DynamoDB numbers must be Decimal; a JSON round trip turns every float into one.
    plain = json.loads(json.dumps(values), parse_float=Decimal)
    return {key: _serializer.serialize(value) for key, value in plain.items()}


def _deserialize(item: dict[str, Any]) -> dict[str, Any]:
    values = {key: _deserializer.deserialize(value) for key, value in item.items()}
    plain: dict[str, Any] = json.loads(json.dumps(values, default=_decimal_to_number))
    return plain


def _decimal_to_number(value: object) -> int | float:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _cancellation_reasons(error: ClientError) -> dict[int, str]:
    """Why each operation of a cancelled transaction failed (operations that did not fail,
    reason `None`, are left out); empty if the error is not a cancellation."""
    if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return {}
    reasons = error.response.get("CancellationReasons") or []
    return {
        index: str(reason["Code"])
        for index, reason in enumerate(reasons)
        if (reason or {}).get("Code") not in (None, "None")
    }
