"""End-to-end latency on the local stack: EC2 event put → frame on an SSE client.

Every hop is real (moto over HTTP, the template's rule and tap queue, both handlers, the
DynamoDB stream, SNS, the relay's queue, uvicorn). moto dominates the figures, so they
describe the local stack, not AWS. Usage: python -m benchmarks.local_latency [--events N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from cmlfleet import bootstrap
from devstack.ec2events import put_state_change
from devstack.fleet import launch_instance, register_instance
from devstack.relayproc import RelayProcess
from devstack.stack import ACCOUNT_ID, LocalStack, free_port
from tests.sse_client import SseStream

CYCLE = ("stopping", "stopped", "pending", "running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=40)
    args = parser.parse_args()
    saved = dict(os.environ)
    stack = LocalStack(
        overrides={"POWERTOOLS_LOG_LEVEL": "ERROR", "POWERTOOLS_METRICS_DISABLED": "true"}
    ).start()
    relay = None
    try:
        worker = register_instance(
            launch_instance(stack.client("ec2"), "bench", "bench"), "bench", "bench", stack.region
        )
        environment = stack.environment() | {
            "TOPIC_ARN": stack.outputs["DomainEventsTopicArn"],
            "RELAY_POLL_WAIT_SECONDS": "20",
            "RELAY_ANONYMOUS_ROLE": "admin",
            # Not the API's issuer, which the local stack left in this environment: with
            # an issuer a relay refuses anonymous clients.
            "OIDC_ISSUER": "",
            "OIDC_AUDIENCE": "",
        }
        relay = RelayProcess(environment, port=free_port()).start()
        events = stack.client("events")
        latencies = []
        with SseStream(f"{relay.url}/api/events/stream") as stream:
            stream.next()
            for index in range(args.events):
                started = time.perf_counter()
                put_state_change(
                    events,
                    worker.instance_id,
                    CYCLE[index % 4],
                    region=stack.region,
                    account=ACCOUNT_ID,
                )
                stream.wait_for(lambda e: e.event == "worker.status.updated", timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"events: {len(latencies)}")
        print(
            f"EC2 event put -> SSE frame, ms: p50 {statistics.median(latencies):.0f}, "
            f"p99 {p99:.0f}, max {latencies[-1]:.0f}"
        )
    finally:
        if relay is not None:
            relay.stop()
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)
        bootstrap.reset()


if __name__ == "__main__":
    main()
