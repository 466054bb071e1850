"""Forged tokens against what test_authentication.py does not send them to.

test_authentication.py shows every refused token (alg none, another key, HS256 key
confusion, expired, not yet valid, another audience or issuer, ...) gets a 401 on
`GET /api/workers`. Here the same tokens go to the routes that change something and to
the stream ticket endpoint: each gets a 401, and nothing is launched, changed or issued.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.shared_fleet import Fleet, running_fleet
from tests.api.test_authentication import REFUSED_TOKENS, TokenMaker, bearer, unauthorized


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet() as fleet:
        yield fleet


def instances(fleet: Fleet) -> list[tuple[str, str]]:
    reservations = fleet.ec2.describe_instances()["Reservations"]
    return sorted(
        (i["InstanceId"], i["State"]["Name"]) for r in reservations for i in r["Instances"]
    )


def tickets(fleet: Fleet) -> list[dict[str, Any]]:
    items = fleet.aws.dynamodb.scan(TableName=fleet.aws.table_name)["Items"]
    return [item for item in items if item["kind"]["S"] == "ticket"]


@pytest.mark.parametrize(("make_token", "why"), REFUSED_TOKENS)
def test_a_refused_token_gets_no_stream_ticket(
    fleet: Fleet, make_token: TokenMaker, why: str
) -> None:
    response = fleet.client.post("/api/events/tickets", headers=bearer(make_token(fleet.issuer)))

    assert why in unauthorized(response).lower()
    assert tickets(fleet) == []


@pytest.mark.parametrize(("make_token", "why"), REFUSED_TOKENS)
def test_a_refused_token_commands_nothing(fleet: Fleet, make_token: TokenMaker, why: str) -> None:
    running, stopped = fleet.worker_ids[0], fleet.worker_ids[1]
    importable = fleet.launch_instance()
    workers, ec2 = fleet.snapshot(), instances(fleet)
    token = bearer(make_token(fleet.issuer))

    responses = [
        fleet.client.post("/api/workers", json={"name": "evil"}, headers=token),
        fleet.client.post("/api/workers/import", json={"instance_id": importable}, headers=token),
        fleet.client.post(f"/api/workers/{stopped}/start", headers=token),
        fleet.client.post(f"/api/workers/{running}/stop", headers=token),
        fleet.client.post(f"/api/workers/{running}/labs/refresh", headers=token),
        fleet.client.delete(f"/api/workers/{running}", headers=token),
    ]

    assert all(why in unauthorized(response).lower() for response in responses)
    assert fleet.snapshot() == workers
    assert instances(fleet) == ec2
