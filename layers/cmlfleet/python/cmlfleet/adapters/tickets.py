"""Stream tickets: short-lived, single-use stand-ins for a bearer token.

A browser's EventSource cannot send an `Authorization` header, so it trades its token for
a ticket (`POST /api/events/tickets`) and opens the stream with `?ticket=…`. Only a hash
of the ticket is stored, with the caller's identity and a TTL; redeeming deletes it, so a
ticket works once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cmlfleet.identity import Principal, Role

TICKET_PK_PREFIX = "TICKET#"
TICKET_BYTES = 32
# What `secrets.token_urlsafe(TICKET_BYTES)` makes: 43 base64url characters, no padding.
TICKET_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def well_formed_ticket(ticket: str) -> bool:
    """Whether `ticket` could be one we issued: anything else is refused without a lookup."""
    return TICKET_PATTERN.fullmatch(ticket) is not None


@dataclass(frozen=True)
class IssuedTicket:
    ticket: str
    expires_at: int


class DynamoDbTicketStore:
    def __init__(self, table_name: str, client: Any, ttl_seconds: int = 60) -> None:
        self._table, self._client, self._ttl = table_name, client, ttl_seconds

    def issue(self, principal: Principal, now: float | None = None) -> IssuedTicket:
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        issued = int(now if now is not None else time.time())
        expires_at = min(issued + self._ttl, principal.expires_at)
        self._client.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": _key(ticket)},
                "sk": {"S": "TICKET"},
                "kind": {"S": "ticket"},
                "subject": {"S": principal.subject},
                "username": {"S": principal.username},
                "role": {"S": principal.role.value},
                "token_expires_at": {"N": str(principal.expires_at)},
                "expires_at": {"N": str(expires_at)},
            },
        )
        return IssuedTicket(ticket, expires_at)

    def redeem(self, ticket: str, now: float | None = None) -> Principal | None:
        """The ticket's principal, once; `None` if unknown, used or expired."""
        if not well_formed_ticket(ticket):
            return None  # not ours: no DynamoDB write (a conditional delete) spent on it
        try:
            response = self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": _key(ticket)}, "sk": {"S": "TICKET"}},
                ConditionExpression="attribute_exists(pk)",
                ReturnValues="ALL_OLD",
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
        item = response.get("Attributes", {})
        # DynamoDB's TTL deletes late, so expiry is checked here too.
        if int(item["expires_at"]["N"]) < int(now if now is not None else time.time()):
            return None
        return Principal(
            subject=item["subject"]["S"],
            username=item["username"]["S"],
            role=Role(item["role"]["S"]),
            expires_at=int(item["token_expires_at"]["N"]),
        )


def _key(ticket: str) -> str:
    return TICKET_PK_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()
