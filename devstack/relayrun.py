"""`python -m devstack.relayrun`: the relay exactly as `python -m relay` runs it, with its
AWS calls recorded as the relay task role's when the local stack records
(`CMLFLEET_AWS_CALL_RUN`, see devstack/awscalls.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import boto3

from devstack import awscalls, iampolicies
from relay.__main__ import main


def record_if_asked() -> None:
    directory = os.environ.get(awscalls.RUN_VARIABLE)
    if not directory:
        return

    def lookup_client(service: str) -> object:
        return boto3.session.Session().client(service)

    recording = awscalls.Recording(
        Path(directory), awscalls.Lookup(lookup_client), default_caller=iampolicies.RELAY
    )
    awscalls.start(recording)


if __name__ == "__main__":
    record_if_asked()
    sys.exit(main())
