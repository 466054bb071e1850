"""Failures real AWS produces and moto never does, injected at botocore's level.

moto never cancels a DynamoDB transaction for a conflict with another one in flight, nor
throttles one; real DynamoDB does both (`TransactionCanceledException` with the reason
`TransactionConflict` or `ThrottlingError` for the item concerned), and botocore's own
retries do not retry it. `TransactionCancellations` answers chosen `TransactWriteItems`
calls that way before they reach moto, so nothing is written, exactly as on AWS.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from types import TracebackType
from typing import Any

from botocore.awsrequest import AWSResponse

from cmlfleet.adapters import aws
from devstack import awscalls

Answer = tuple[AWSResponse, dict[str, Any]]  # what a before-call handler answers instead


class TransactionCancellations:
    """Cancel the next `count` transactions (all of them if None) with `reason`, optionally
    only those made by the `callers` given (deployables, as devstack.awscalls names them).

    Use as a context manager for clients made by `cmlfleet.adapters.aws`, or `attach` it
    to a client of your own."""

    def __init__(
        self,
        reason: str = "TransactionConflict",
        *,
        count: int | None = 1,
        callers: Collection[str] | None = None,
    ) -> None:
        self.reason, self.remaining, self.callers = reason, count, callers
        self.cancelled = 0
        self.active = True
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.dynamodb.TransactWriteItems", self._answer)

    def __enter__(self) -> TransactionCancellations:
        self.active = True
        aws.on_new_client(self.attach)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.active = False  # clients keep the handler; it does nothing from now on
        aws.forget_client_hook(self.attach)

    def _answer(
        self, params: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not self.active:
            return None
        if self.callers is not None and awscalls.caller.get() not in self.callers:
            return None
        with self._lock:
            if self.remaining is not None:
                if self.remaining <= 0:
                    return None
                self.remaining -= 1
            self.cancelled += 1
        items = len(_transact_items(params))
        # The first item (the worker) is the one in conflict; the others did not fail.
        reasons = [{"Code": self.reason, "Message": _MESSAGES.get(self.reason, self.reason)}]
        reasons += [{"Code": "None"}] * (items - 1)
        codes = ", ".join(r["Code"] for r in reasons)
        body = {
            "Error": {
                "Code": "TransactionCanceledException",
                "Message": f"Transaction cancelled, please refer cancellation reasons for "
                f"specific reasons [{codes}]",
            },
            "CancellationReasons": reasons,
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return AWSResponse("https://dynamodb.local/", 400, {}, None), body


_MESSAGES = {
    "TransactionConflict": "Transaction is ongoing for the item",
    "ThrottlingError": "Throughput exceeds the current capacity for one or more global "
    "secondary indexes. DynamoDB is automatically scaling your index.",
}


def _transact_items(params: dict[str, Any]) -> list[Any]:
    """The transaction's items from the serialized request (a JSON body)."""
    body = params.get("body", b"{}")
    parsed = json.loads(body.decode() if isinstance(body, bytes) else body or "{}")
    items: list[Any] = parsed.get("TransactItems", [])
    return items
