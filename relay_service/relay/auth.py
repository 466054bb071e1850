"""Who opens a stream: a single-use ticket (browsers) or a bearer token (everything else).

EventSource cannot send headers, so a browser trades its token for a ticket at
`POST /api/events/tickets` and opens `?ticket=…`; the relay redeems it (once). Other
clients send `Authorization: Bearer <token>`, verified exactly as the API does.
"""

from __future__ import annotations

from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.identity import AuthenticationError, Principal, Role, TokenVerifier

FAR_FUTURE = 2**62


class StreamAuthenticator:
    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        tickets: DynamoDbTicketStore | None,
        anonymous_role: Role | None = None,
    ) -> None:
        self._verifier, self._tickets, self._anonymous = verifier, tickets, anonymous_role

    def authenticate(self, ticket: str | None, authorization: str | None) -> Principal:
        """The client's principal; raises `AuthenticationError` with a reason it may read."""
        if ticket:
            if self._tickets is None:
                raise AuthenticationError("this relay does not accept tickets")
            principal = self._tickets.redeem(ticket)
            if principal is None:
                raise AuthenticationError("ticket unknown, used or expired; get a new one")
            return principal
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if self._verifier is None:
                raise AuthenticationError("this relay does not accept bearer tokens")
            return self._verifier.verify(token.strip())
        if self._anonymous is not None:
            # Development and tests only (RELAY_ANONYMOUS_ROLE); logged loudly at start.
            return Principal("anonymous", "anonymous", self._anonymous, FAR_FUTURE)
        raise AuthenticationError("a ticket or a bearer token is required")
