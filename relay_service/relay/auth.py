"""Who opens a stream: a single-use ticket (browsers) or a bearer token (everything else).

EventSource cannot send headers, so a browser trades its token for a ticket at
`POST /api/events/tickets` and opens `?ticket=…`; the relay redeems it (once). Other
clients send `Authorization: Bearer <token>`, verified exactly as the API does.

Reading the credential is cheap and done first, on the event loop: a missing or malformed
one is refused there, before any thread, key fetch or DynamoDB call is spent on it.
Checking it (`principal`) blocks, and the stream endpoint runs it on an executor of the
credential's kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cmlfleet.adapters.tickets import DynamoDbTicketStore, well_formed_ticket
from cmlfleet.identity import AuthenticationError, Principal, Role, TokenVerifier

FAR_FUTURE = 2**62
MAX_TOKEN_LENGTH = 8192  # a Cognito ID token with many groups is ~2 KB


@dataclass(frozen=True)
class Credential:
    kind: Literal["ticket", "token", "anonymous"]
    value: str = ""


class StreamAuthenticator:
    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        tickets: DynamoDbTicketStore | None,
        anonymous_role: Role | None = None,
    ) -> None:
        self._verifier, self._tickets, self._anonymous = verifier, tickets, anonymous_role

    def credential(self, ticket: str | None, authorization: str | None) -> Credential:
        """What the client presents; raises `AuthenticationError` if it cannot be one."""
        if ticket:
            if self._tickets is None:
                raise AuthenticationError("this relay does not accept tickets")
            if not well_formed_ticket(ticket):
                raise AuthenticationError("ticket unknown, used or expired; get a new one")
            return Credential("ticket", ticket)
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            if self._verifier is None:
                raise AuthenticationError("this relay does not accept bearer tokens")
            if len(token) > MAX_TOKEN_LENGTH:
                raise AuthenticationError("malformed token")
            return Credential("token", token)
        if self._anonymous is not None:
            # Development and tests only (RELAY_ANONYMOUS_ROLE); logged loudly at start.
            return Credential("anonymous")
        raise AuthenticationError("a ticket or a bearer token is required")

    def principal(self, credential: Credential) -> Principal:
        """The credential's principal (blocking: a DynamoDB call or a key fetch)."""
        if credential.kind == "ticket":
            assert self._tickets is not None
            principal = self._tickets.redeem(credential.value)
            if principal is None:
                raise AuthenticationError("ticket unknown, used or expired; get a new one")
            return principal
        if credential.kind == "token":
            assert self._verifier is not None
            return self._verifier.verify(credential.value)
        assert self._anonymous is not None
        return Principal("anonymous", "anonymous", self._anonymous, FAR_FUTURE)

    def authenticate(self, ticket: str | None, authorization: str | None) -> Principal:
        """Both steps at once (blocking), for callers without an event loop."""
        return self.principal(self.credential(ticket, authorization))
