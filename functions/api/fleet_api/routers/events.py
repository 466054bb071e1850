"""/api/events/tickets: a short-lived, single-use ticket to open the event stream."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, status

from fleet_api.deps import ContainerDep, CurrentPrincipal
from fleet_api.schemas import StreamTicket

router = APIRouter(prefix="/api/events", tags=["events"])


@router.post("/tickets", status_code=status.HTTP_201_CREATED)
def issue_ticket(principal: CurrentPrincipal, container: ContainerDep) -> StreamTicket:
    """EventSource cannot send headers: trade the bearer token for a ticket for the URL."""
    issued = container.tickets.issue(principal)
    return StreamTicket(
        ticket=issued.ticket,
        expires_at=issued.expires_at,
        stream_url=f"/api/events/stream?ticket={quote(issued.ticket)}",
    )
