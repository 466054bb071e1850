"""Real-shaped `EC2 Instance State-change Notification` events, put on the local bus."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cmlfleet.timeutil import utc_now

DETAIL_TYPE = "EC2 Instance State-change Notification"
EC2_STATES = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
NEXT_STATE = {
    "pending": "running",
    "running": "stopping",
    "stopping": "stopped",
    "stopped": "pending",
    "shutting-down": "terminated",
}


def state_change_entry(
    instance_id: str, state: str, *, region: str, account: str, time: datetime | None = None
) -> dict[str, Any]:
    """A `put_events` entry shaped exactly like the one EC2 sends to EventBridge."""
    when = time or utc_now()
    return {
        "Source": "aws.ec2",
        "DetailType": DETAIL_TYPE,
        "Detail": json.dumps({"instance-id": instance_id, "state": state}),
        "Resources": [f"arn:aws:ec2:{region}:{account}:instance/{instance_id}"],
        "Time": when,
    }


def put_state_change(
    events_client: Any,
    instance_id: str,
    state: str,
    *,
    region: str,
    account: str,
    time: datetime | None = None,
) -> str:
    """Put one state-change event on the default bus; returns the event id."""
    entry = state_change_entry(instance_id, state, region=region, account=account, time=time)
    response = events_client.put_events(Entries=[entry])
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"put_events failed: {response['Entries']}")
    return str(response["Entries"][0]["EventId"])
