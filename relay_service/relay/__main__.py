"""`python -m relay`: the relay under uvicorn, with the shutdown sequence on SIGTERM.

uvicorn waits for open responses before it runs the app's shutdown, and an SSE response
never ends by itself, so the signal first tells the hub to send `system.sse.shutdown`
and end every stream; uvicorn then closes cleanly. (On ECS the sequence usually began
earlier, when the task metadata said the task is stopping: `relay/draining.py`.) The
metrics server on `RELAY_METRICS_PORT` lives in the app's lifespan, so it starts and
stops with this one and leaves the signals to it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from types import FrameType

import uvicorn
from aws_lambda_powertools import Logger

from cmlfleet.adapters import aws
from cmlfleet.adapters.tickets import DynamoDbTicketStore
from cmlfleet.identity import JwksSigningKeys, Role, TokenVerifier
from cmlfleet.settings import ConfigurationError
from relay.app import Relay, create_app
from relay.auth import StreamAuthenticator
from relay.bus import SqsEventBus
from relay.history import DynamoDbEventLog
from relay.runtime import tune_garbage_collector
from relay.settings import RelaySettings, load_relay_settings

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RelayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self._relay = relay

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._relay.begin_shutdown_threadsafe()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the signal once it has shut down, so the process dies by it;
        # a relay that drained its clients has done its job and exits 0 instead.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def build_bus(settings: RelaySettings) -> SqsEventBus:
    return SqsEventBus(
        sqs=aws.client("sqs", read_timeout=settings.relay_poll_wait_seconds + 10),
        sns=aws.client("sns"),
        topic_arn=settings.topic_arn,
        queue_name=f"{settings.relay_queue_prefix}-{settings.relay_task_id}",
        poll_wait_seconds=settings.relay_poll_wait_seconds,
        dlq_arn=settings.relay_dlq_arn,
        max_receive_count=settings.relay_max_receive_count,
    )


def build_authenticator(settings: RelaySettings) -> StreamAuthenticator:
    verifier = None
    if settings.oidc_issuer and settings.oidc_audience and settings.jwks_url:
        verifier = TokenVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            keys=JwksSigningKeys(settings.jwks_url),
            roles_claim=settings.roles_claim,
            owner_claim=settings.owner_claim,
        )
    tickets = (
        DynamoDbTicketStore(settings.table_name, aws.client("dynamodb"))
        if settings.table_name
        else None
    )
    anonymous = Role(settings.relay_anonymous_role) if settings.relay_anonymous_role else None
    if anonymous is not None:
        print(
            f"relay: WARNING: clients without credentials are let in as {anonymous}"
            " (RELAY_ANONYMOUS_ROLE; development only)",
            file=sys.stderr,
        )
    return StreamAuthenticator(verifier=verifier, tickets=tickets, anonymous_role=anonymous)


def main() -> int:
    try:
        settings = load_relay_settings()
    except ConfigurationError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    # The parent of every module's `Logger(child=True)`: without it their records have no
    # handler, and Python prints warnings bare (no keys) and drops the rest.
    Logger()
    event_log = (
        DynamoDbEventLog(
            settings.table_name,
            aws.client("dynamodb"),
            settings.relay_replay_max,
            timedelta(hours=settings.relay_replay_max_age_hours),
        )
        if settings.table_name
        else None
    )
    app = create_app(settings, build_bus(settings), event_log, build_authenticator(settings))
    config = uvicorn.Config(
        app,
        host=settings.relay_host,
        port=settings.relay_port,
        timeout_graceful_shutdown=int(settings.relay_shutdown_max_ms / 1000) + 5,
        log_level=settings.relay_log_level,
        access_log=False,
        # Longer than the load balancer's idle timeout (90 s in template.yaml), so it is
        # always the balancer that closes an idle keep-alive connection, never the relay
        # under a request the balancer is about to send (a 502).
        timeout_keep_alive=settings.relay_keep_alive_seconds,
    )
    server = RelayServer(config, app.state.relay)
    tune_garbage_collector()
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
