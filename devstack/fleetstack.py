"""The whole local system in one object: what `make run` starts and the e2e tests use.

moto and the template's stack (LocalStack), the development issuer, the EC2 simulator,
the relay as a child process, and the local origin (API in-process, relay proxied) under
uvicorn on one port.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

import uvicorn

from devstack import DEMO_USERS, awscalls
from devstack.cloudwatchsim import CloudWatchFeeder
from devstack.cmlsim import CmlSimulator
from devstack.ec2sim import Delays, Ec2Simulator
from devstack.issuer import DEV_AUDIENCE, DevelopmentIssuer
from devstack.origin import LocalOrigin, accepted_hosts
from devstack.relayproc import RelayProcess
from devstack.stack import ACCOUNT_ID, LOCAL_PARAMETERS, LocalStack, free_port

log = logging.getLogger("devstack")


def local_issuer_url(host: str, port: int) -> str:
    """The development issuer's URL for an origin listening on `host`: a loopback address
    that origin answers on (127.0.0.1 for `localhost` and 0.0.0.0, ::1 for ::)."""
    bare = host.strip("[]")
    if bare in ("localhost", "0.0.0.0"):
        bare = "127.0.0.1"
    elif bare == "::":
        bare = "::1"
    address = f"[{bare}]" if ":" in bare else bare
    return f"http://{address}:{port}/auth"


# The API's docs page (Swagger UI from a CDN) is for the developer here, never deployed.
LOCAL_API_ENVIRONMENT = {"API_DOCS": "true"}


@dataclass
class FleetStack:
    host: str = "127.0.0.1"
    port: int = 0
    heartbeat_seconds: float = 30.0
    ec2_delays: Delays = field(default_factory=Delays)
    overrides: dict[str, str] = field(default_factory=dict)
    schedule_speedup: float = 1.0
    run_schedules: bool = True
    relay_output: IO[bytes] | None = None
    cml_tls: bool = True
    cml: CmlSimulator | None = None
    stack: LocalStack | None = None
    issuer: DevelopmentIssuer | None = None
    relay: RelayProcess | None = None
    simulator: Ec2Simulator | None = None
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, before_simulation: Any = None) -> FleetStack:
        """Start everything; `before_simulation(stack)` runs while EC2 is still quiet."""
        self.port = self.port or free_port(self.host)
        _forget_api_adapters()
        # The functions and the relay fetch the issuer's keys over http, which they allow on
        # loopback only: on a loopback address the origin listens on (`local_issuer_url`),
        # so `--host` is loopback or a wildcard (`check_exposure` refuses one LAN address).
        self.issuer = DevelopmentIssuer(local_issuer_url(self.host, self.port), DEV_AUDIENCE)
        # Over HTTPS, so the collectors pin each worker's certificate as on AWS.
        self.cml = cml = CmlSimulator().start(
            tick_every=60 / self.schedule_speedup, tls=self.cml_tls
        )
        parameters = LOCAL_PARAMETERS | {
            "OidcIssuer": self.issuer.issuer,
            "CmlEndpointTemplate": cml.url + "/workers/{instance_id}",
        }
        self.stack = stack = LocalStack(
            moto_port=free_port(),
            overrides=LOCAL_API_ENVIRONMENT | self.overrides,
            parameters=parameters,
            run_schedules=False,  # started last, once the fleet and its CML hosts exist
            schedule_speedup=self.schedule_speedup,
        )
        stack.before_schedule["MetricsCollectorFunction"] = self._feed_cloudwatch
        stack.start()
        credentials = stack.secret_value("CmlCredentialsSecret")
        cml.username, cml.password = credentials["username"], credentials["password"]
        if before_simulation is not None:
            before_simulation(stack)
        self.simulator = Ec2Simulator(
            stack.client("ec2"),
            stack.client("events"),
            region=stack.region,
            account=ACCOUNT_ID,
            delays=self.ec2_delays,
            on_change=self._give_cml_host,
        )
        self.simulator.adopt_existing()
        for instance_id in self.simulator.known_instances():
            cml.add_worker(instance_id)
        self.simulator.start()
        relay_env = stack.environment() | {
            "TOPIC_ARN": stack.outputs["DomainEventsTopicArn"],
            "TABLE_NAME": stack.outputs["WorkersTableName"],
            "OIDC_ISSUER": self.issuer.issuer,
            "OIDC_AUDIENCE": self.issuer.audience,
            "RELAY_DLQ_ARN": stack.outputs["RelayDeadLetterQueueArn"],
            "RELAY_POLL_WAIT_SECONDS": "2",
            "HEARTBEAT_SECONDS": str(self.heartbeat_seconds),
            "RELAY_LOG_LEVEL": "warning",
            # Every browser of a local stack connects from 127.0.0.1: a per-address limit
            # would count them all as one client. The per-user limits stay as deployed.
            "RELAY_STREAMS_PER_ADDRESS": "100000",
            "RELAY_CONNECTS_PER_ADDRESS_PER_MINUTE": "1000000",
            "RELAY_CONNECT_BURST_PER_ADDRESS": "100000",
            "DASHBOARD_SIGN_IN": "development",
            "DASHBOARD_DEV_USERS": ",".join(f"{u}:{r}" for u, r in DEMO_USERS.items()),
        }
        # Kept before it is ready, so a relay that fails to start is still stopped.
        self.relay = RelayProcess(relay_env, port=free_port(), output=self.relay_output)
        self.relay.start()
        self._serve_origin(stack)
        if self.run_schedules:
            stack.start_schedules()
        return self

    def _give_cml_host(self, instance_id: str, state: str) -> None:
        """Every simulated instance runs a simulated CML (added at launch, gone at the end)."""
        assert self.cml is not None
        if state == "terminated":
            self.cml.remove_worker(instance_id)
        elif state == "running":
            try:
                self.cml.worker(instance_id)
            except KeyError:
                self.cml.add_worker(instance_id)

    def _feed_cloudwatch(self) -> None:
        assert self.stack is not None
        assert self.cml is not None
        CloudWatchFeeder(
            self.stack.client("ec2"), self.stack.client("cloudwatch"), self.cml
        ).publish()

    def _serve_origin(self, stack: LocalStack) -> None:
        assert self.issuer is not None
        assert self.relay is not None
        api = awscalls.acting_app(stack.functions["ApiFunction"].module.app, "ApiFunction")
        origin = LocalOrigin(
            api=api,
            relay_url=self.relay.url,
            auth=self.issuer.app(),
            hosts=accepted_hosts(self.host, self.port),
        )
        config = uvicorn.Config(
            origin,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=3,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="origin", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local origin did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()  # first: its clients get system.sse.shutdown through the origin
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        if self.simulator is not None:
            self.simulator.stop()
        if self.stack is not None:
            self.stack.stop()
        if self.cml is not None:
            self.cml.stop()
        _forget_api_adapters()


def _forget_api_adapters() -> None:
    """The API's adapters are cached per process; a new stack must not reuse the last one's."""
    import sys

    for module_name, function_name in (
        ("fleet_api.deps", "build_container"),
        ("fleet_api.settings", "load_api_settings"),
    ):
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(module, function_name).cache_clear()
