"""A CML 2.9 simulator: a real HTTP server speaking the part of the REST API CML Fleet uses.

One server hosts many virtual controllers, each under `/workers/{key}` with its own labs,
load, tokens and fault, so the local stack can give every simulated EC2 worker its own
CML and a benchmark can poll a thousand of them on one port. Each controller is built
from a seed and changes only in `tick()` (labs added, removed, started and stopped, nodes
added and removed, CPU and memory drifting), so a seed and a sequence of ticks always
give the same state. Responses follow the shapes of `reference/cml_v2.9_openapi.json`
closely enough for the official `virl2-client` to log in and read labs and stats.

It serves HTTPS with `start(tls=True)`: a self-signed certificate made at start, as a CML
host has, that `renew_certificate()` replaces (a reinstalled host, or an impostor), so that
pinning is exercised as on a real fleet.

This is one module (longer than most) because the state and the routes serving it change
together; the controller model comes first, the HTTP side after it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import math
import random
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Fault = Literal["none", "hang", "error", "refuse_auth"]

CML_VERSION = "2.9.0"
# The simulator's well-known local login (it guards nothing real).
DEFAULT_USERNAME = "admin"
DEFAULT_PASSWORD = "admin-password"  # noqa: S105
GIB = 1024**3
MIB = 1024**2
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# (node definition, RAM in MiB, vCPUs): a typical mix of CML reference platforms.
NODE_KINDS = (
    ("iosv", 512, 1),
    ("iosvl2", 768, 1),
    ("csr1000v", 3072, 1),
    ("nxosv9000", 8192, 2),
    ("ubuntu", 2048, 1),
    ("alpine", 512, 1),
)
LAB_TOPICS = (
    "CCNA study lab",
    "OSPF multi-area",
    "BGP peering",
    "EVPN fabric",
    "SD-WAN pilot",
    "Firewall HA test",
    "MPLS L3VPN",
    "IPv6 migration",
)
# Events per simulated minute; each tick draws them with probability 1 - exp(-rate * min).
RATES = {"add": 0.08, "remove": 0.04, "start": 0.15, "stop": 0.10, "resize": 0.10}
# The checks `system_health` reports per compute; all pass on a simulated one.
COMPUTE_CHECKS = (
    "kvm_vmx_enabled",
    "enough_cpus",
    "lld_connected",
    "lld_synced",
    "libvirt",
    "fabric",
    "device_mux",
    "refplat_images_available",
    "docker_shim",
    "valid",
)
MAX_LABS = 12
MAX_TOKENS = 256


@dataclass
class SimNode:
    id: str
    label: str
    kind: str
    ram: int
    cpus: int

    def interface_ids(self) -> tuple[str, str]:
        # Derived, not drawn: links are rebuilt from node order without touching the RNG.
        node = uuid.UUID(self.id)
        return str(uuid.uuid5(node, "eth0")), str(uuid.uuid5(node, "eth1"))


@dataclass
class SimLab:
    id: str
    title: str
    description: str
    state: str
    nodes: list[SimNode]
    created: datetime
    modified: datetime

    def deployed(self) -> bool:
        return self.state != "DEFINED_ON_CORE"


@dataclass
class VirtualCml:
    """One simulated controller (with one all-in-one compute), all drawn from `seed`."""

    key: str
    seed: int
    now: datetime
    rng: random.Random = field(init=False)
    labs: dict[str, SimLab] = field(default_factory=dict)
    tokens: OrderedDict[str, None] = field(default_factory=OrderedDict)
    fault: Fault = "none"

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.admin_id, self.compute_id = self._uuid(), self._uuid()
        self.cpu_count = self.rng.choice((8, 16, 32, 48))
        self.memory_total = self.rng.choice((32, 64, 128)) * GIB
        self.disk_total = self.rng.choice((256, 512, 1024)) * GIB
        self.idle_cpu = self.rng.uniform(2.0, 6.0)
        self.cpu_noise = self.memory_noise = 0.0
        self.disk_growth = 0.0
        self.load: list[float] = [0.0, 0.0, 0.0]
        self.serial = 0
        for _ in range(self.rng.randint(1, 4)):
            self._add_lab()
        self._drift(1.0)

    def tick(self, seconds: float) -> None:
        """Advance `seconds` of simulated time: random lab events, then drifting load."""
        minutes = max(0.0, seconds) / 60
        self.now += timedelta(seconds=max(0.0, seconds))
        for event, rate in RATES.items():
            if self.rng.random() < 1 - math.exp(-rate * minutes):
                getattr(self, f"_{event}_lab")()
        self._drift(minutes)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _new_node(self, index: int) -> SimNode:
        kind, ram, cpus = self.rng.choice(NODE_KINDS)
        return SimNode(self._uuid(), f"{kind}-{index}", kind, ram, cpus)

    def _add_lab(self) -> None:
        if len(self.labs) >= MAX_LABS:
            return
        self.serial += 1
        nodes = [self._new_node(i) for i in range(self.rng.randint(2, 8))]
        state = self.rng.choice(("DEFINED_ON_CORE", "STOPPED", "STARTED"))
        topic = self.rng.choice(LAB_TOPICS)
        lab = SimLab(
            self._uuid(), f"{topic} {self.serial}", topic, state, nodes, self.now, self.now
        )
        self.labs[lab.id] = lab

    def _pick(self, *states: str) -> SimLab | None:
        candidates = [lab for lab in self.labs.values() if lab.state in states]
        return self.rng.choice(candidates) if candidates else None

    def _remove_lab(self) -> None:
        lab = self._pick("DEFINED_ON_CORE", "STOPPED")  # CML removes only stopped labs
        if lab is not None:
            del self.labs[lab.id]

    def _start_lab(self) -> None:
        self._set_state(self._pick("DEFINED_ON_CORE", "STOPPED"), "STARTED")

    def _stop_lab(self) -> None:
        self._set_state(self._pick("STARTED"), "STOPPED")

    def _resize_lab(self) -> None:
        lab = self._pick("DEFINED_ON_CORE", "STOPPED", "STARTED")
        if lab is None:
            return
        if len(lab.nodes) > 1 and self.rng.random() < 0.5:
            lab.nodes.pop(self.rng.randrange(len(lab.nodes)))
        else:
            lab.nodes.append(self._new_node(len(lab.nodes)))
        lab.modified = self.now

    def _set_state(self, lab: SimLab | None, state: str) -> None:
        if lab is not None:
            lab.state, lab.modified = state, self.now

    def _drift(self, minutes: float) -> None:
        """Noise that reverts to the mean, so load wanders but stays near what labs explain."""
        keep, spread = math.exp(-minutes / 5), math.sqrt(min(minutes, 5.0))
        self.cpu_noise = self.cpu_noise * keep + self.rng.gauss(0, 3.0) * spread
        self.memory_noise = self.memory_noise * keep + self.rng.gauss(0, 0.01) * spread
        self.disk_growth += self.rng.uniform(0, 0.02) * minutes * GIB
        cpu = self.cpu_percent()
        self.load = [*self.load[1:], round(cpu * self.cpu_count / 100, 2)]

    def running_nodes(self) -> list[SimNode]:
        return [n for lab in self.labs.values() if lab.state == "STARTED" for n in lab.nodes]

    def cpu_percent(self) -> float:
        # A booted node keeps about a third of its vCPUs busy.
        demand = sum(node.cpus for node in self.running_nodes()) * 0.35
        return _clamp(self.idle_cpu + 100 * demand / self.cpu_count + self.cpu_noise, 0, 100)

    def memory_used(self) -> float:
        used = 6 * GIB + sum(node.ram for node in self.running_nodes()) * MIB
        return _clamp(used * (1 + self.memory_noise), 0, self.memory_total)

    def disk_used(self) -> float:
        deployed = sum(len(lab.nodes) for lab in self.labs.values() if lab.deployed())
        used = 40 * GIB + deployed * 1.5 * GIB + self.disk_growth
        return _clamp(used, 0, self.disk_total)


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _size(used: float, total: float) -> dict[str, float]:
    return {"used": round(used), "free": round(total - used), "total": total}


def system_stats(cml: VirtualCml) -> dict[str, Any]:
    """`SystemStats`: totals in `all`, the one compute with its `dominfo` in `computes`."""
    running = cml.running_nodes()
    deployed = sum(len(lab.nodes) for lab in cml.labs.values() if lab.deployed())
    cpu = {"count": cml.cpu_count, "percent": round(cml.cpu_percent(), 2)}
    memory = _size(cml.memory_used(), cml.memory_total)
    disk = _size(cml.disk_used(), cml.disk_total)
    dominfo = {
        "allocated_cpus": sum(node.cpus for node in running),
        "allocated_memory": sum(node.ram for node in running) * 1024,  # KiB, as libvirt
        "total_nodes": deployed,
        "total_orphans": 0,
        "running_nodes": len(running),
        "running_orphans": 0,
    }
    compute_cpu = cpu | {"model": "Intel Xeon (Icelake)", "predicted": cml.cpu_count}
    return {
        "all": {"cpu": cpu, "memory": memory, "disk": disk},
        "computes": {
            cml.compute_id: {
                "hostname": "cml-controller",
                "is_controller": True,
                "stats": {
                    "cpu": compute_cpu | {"load": cml.load},
                    "memory": memory,
                    "disk": disk,
                    "dominfo": dominfo,
                },
            }
        },
        "controller": {"disk": disk},
    }


def system_health(cml: VirtualCml) -> dict[str, Any]:
    compute: dict[str, Any] = dict.fromkeys(COMPUTE_CHECKS, True)
    compute |= {"admission_state": "READY", "is_controller": True, "hostname": "cml-controller"}
    return {
        "valid": True,
        "computes": {cml.compute_id: compute},
        "is_licensed": True,
        "is_enterprise": False,
        "controller": {
            "core_connected": True,
            "nodes_loaded": True,
            "images_loaded": True,
            "valid": True,
        },
    }


def lab_response(cml: VirtualCml, lab: SimLab) -> dict[str, Any]:
    """`LabResponse`, what `GET /labs/{id}` answers."""
    return {
        "id": lab.id,
        "created": _iso(lab.created),
        "modified": _iso(lab.modified),
        "lab_description": lab.description,
        "lab_notes": "",
        "lab_title": lab.title,
        "owner": cml.admin_id,
        "owner_username": "admin",
        "owner_fullname": "Administrator",
        "state": lab.state,
        "node_count": len(lab.nodes),
        "link_count": max(0, len(lab.nodes) - 1),
        "groups": [],
        "effective_permissions": ["lab_admin", "lab_edit", "lab_exec", "lab_view"],
    }


def lab_topology(cml: VirtualCml, lab: SimLab) -> dict[str, Any]:
    """`TopologyResponse`: the nodes in a chain, each linked to the next by eth1 → eth0."""
    node_state = "BOOTED" if lab.state == "STARTED" else "STOPPED"
    nodes, links = [], []
    for index, node in enumerate(lab.nodes):
        eth0, eth1 = node.interface_ids()
        interfaces = [
            {"id": eth0, "label": "eth0", "type": "physical", "slot": 0},
            {"id": eth1, "label": "eth1", "type": "physical", "slot": 1},
        ]
        nodes.append(
            {
                "id": node.id,
                "label": node.label,
                "node_definition": node.kind,
                "x": index * 120,
                "y": 0,
                "ram": node.ram,
                "cpus": node.cpus,
                "state": node_state,
                "interfaces": interfaces,
            }
        )
        if index:
            previous = lab.nodes[index - 1]
            a, b = previous.interface_ids()[1], eth0
            link_id = str(uuid.uuid5(uuid.UUID(a), b))
            links.append(
                {"id": link_id, "interface_a": a, "interface_b": b, "node_a": previous.id}
                | {"node_b": node.id, "label": f"link-{index}"}
            )
    lab_info = {"version": "0.3.0", "title": lab.title, "description": lab.description}
    lab_info |= {"notes": "", "owner": cml.admin_id}
    return {"lab": lab_info, "nodes": nodes, "links": links, "annotations": []}


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"code": status, "description": description}, status_code=status)


Handler = Callable[[VirtualCml, Request, Any], Response]


class CmlSimulator:
    """Many virtual CML controllers behind one ASGI app, optionally under uvicorn."""

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        epoch: datetime | None = None,
        version: str = CML_VERSION,
    ) -> None:
        self.username, self.password, self.version = username, password, version
        # Simulated time: every controller's clock, and where a newly added one starts.
        self._now = epoch or datetime.now(UTC).replace(microsecond=0)
        self._workers: dict[str, VirtualCml] = {}
        # The app runs in uvicorn's thread while tests and tickers call in from others.
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self.requests: Counter[str] = Counter()  # served requests, by worker key
        self.logins: Counter[str] = Counter()  # login attempts (credentials seen), by key
        self.certificate_pem: str | None = None  # what it presents, when serving HTTPS
        self._tls_dir: Path | None = None
        self._host = "127.0.0.1"
        self.app = Starlette(routes=self._routes())
        self.url = "http://cmlsim"  # what ASGI-transport tests use until `start()`
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []

    # -- the fleet of controllers -------------------------------------------------------

    def add_worker(self, key: str, *, seed: int | None = None) -> str:
        """A new controller under `/workers/{key}`; returns its base URL."""
        if not KEY_PATTERN.match(key):
            raise ValueError(f"worker key must match {KEY_PATTERN.pattern}: {key!r}")
        seed = zlib.crc32(key.encode()) if seed is None else seed
        with self._lock:
            self._workers[key] = VirtualCml(key, seed, self._now)
        return self.worker_url(key)

    def remove_worker(self, key: str) -> None:
        with self._lock:
            self._workers.pop(key, None)

    def worker_url(self, key: str) -> str:
        return f"{self.url}/workers/{key}"

    def worker(self, key: str) -> VirtualCml:
        """The controller's state itself, for tests that look inside."""
        return self._workers[key]

    def set_fault(self, key: str, fault: Fault) -> None:
        """`hang`: no answer; `error`: 500s; `refuse_auth`: 403 on login, tokens revoked."""
        if fault not in get_args(Fault):
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            cml = self._workers[key]
            cml.fault = fault
            if fault == "refuse_auth":
                cml.tokens.clear()  # as after a password change: the next call meets a 401

    def expire_tokens(self, key: str) -> None:
        """Forget every token of a controller, as a restart does."""
        with self._lock:
            self._workers[key].tokens.clear()

    def tick(self, seconds: float = 60) -> None:
        """Advance every controller's simulated clock by `seconds`."""
        with self._lock:
            self._now += timedelta(seconds=max(0.0, seconds))
            for cml in self._workers.values():
                cml.tick(seconds)

    # -- serving ------------------------------------------------------------------------

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tick_every: float | None = None,
        tls: bool = False,
    ) -> CmlSimulator:
        """Serve under uvicorn in a thread; with `tick_every`, tick(60) that often (seconds).

        With `tls`, over HTTPS with a self-signed certificate made now.
        """
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        # The protocol must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such
        # sockets, and without it every response waits ~40 ms for a delayed ACK.
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        self.port = int(listener.getsockname()[1])
        self._host = host
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        certificate: dict[str, Any] = {}
        if tls:
            self._tls_dir = Path(tempfile.mkdtemp(prefix="cmlsim-tls-"))
            certfile, keyfile = self._write_certificate(host)
            certificate = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            backlog=4096,
            **certificate,
        )
        self._server = uvicorn.Server(config)
        server = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, name="cmlsim", daemon=True
        )
        server.start()
        self._threads.append(server)
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not server.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the CML simulator did not start on {self.url}")
            time.sleep(0.01)
        if tick_every:
            ticker = threading.Thread(target=self._tick_every, args=(tick_every,), daemon=True)
            ticker.start()
            self._threads.append(ticker)
        return self

    def stop(self) -> None:
        self._closing.set()  # releases hanging requests, so shutdown does not wait on them
        if self._server is not None:
            self._server.should_exit = True
        for thread in self._threads:
            thread.join(10)
        self._threads.clear()
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None

    def renew_certificate(self) -> str:
        """Present a new self-signed certificate from now on (new connections); its PEM."""
        if self._server is None or self._tls_dir is None:
            raise RuntimeError("the simulator is not serving HTTPS")
        context = self._server.config.ssl
        assert isinstance(context, ssl.SSLContext)
        certfile, keyfile = self._write_certificate(self._host)
        context.load_cert_chain(certfile, keyfile)  # what the next handshakes present
        assert self.certificate_pem is not None
        return self.certificate_pem

    def _write_certificate(self, host: str) -> tuple[Path, Path]:
        """A new key and self-signed certificate for `host`, as files (uvicorn loads files)."""
        assert self._tls_dir is not None
        pem, key = self_signed_certificate(host)
        serial = len(list(self._tls_dir.iterdir()))
        certfile = self._tls_dir / f"cert-{serial}.pem"
        keyfile = self._tls_dir / f"key-{serial}.pem"
        certfile.write_text(pem)
        keyfile.write_bytes(key)
        keyfile.chmod(0o600)
        self.certificate_pem = pem
        return certfile, keyfile

    def _tick_every(self, interval: float) -> None:
        while not self._closing.wait(interval):
            self.tick(60)

    def _routes(self) -> list[Route]:
        api: list[tuple[str, str, Handler, bool]] = [
            ("POST", "authenticate", self._authenticate, False),
            ("POST", "auth_extended", self._auth_extended, False),
            ("GET", "authok", lambda cml, r, b: JSONResponse("OK"), True),
            ("DELETE", "logout", self._logout, True),
            ("GET", "system_information", self._system_information, False),
            ("GET", "system_stats", lambda cml, r, b: JSONResponse(system_stats(cml)), True),
            ("GET", "system_health", lambda cml, r, b: JSONResponse(system_health(cml)), True),
            ("GET", "users", self._users, True),
            ("GET", "labs", lambda cml, r, b: JSONResponse(list(cml.labs)), True),
            ("GET", "labs/{lab_id}", self._lab(lab_response), True),
            ("GET", "labs/{lab_id}/state", self._lab(lambda cml, lab: lab.state), True),
            ("GET", "labs/{lab_id}/topology", self._lab(lab_topology), True),
        ]
        return [
            Route(f"/workers/{{key}}/api/v0/{path}", self._endpoint(handler, auth), methods=[verb])
            for verb, path, handler, auth in api
        ]

    def _endpoint(
        self, handler: Handler, authenticated: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wraps a handler with what every CML call shares: worker, fault, token, lock."""

        async def endpoint(request: Request) -> Response:
            key = request.path_params["key"]
            cml = self._workers.get(key)
            if cml is None:
                return _error(404, f"No CML worker {key!r} on this simulator")
            self.requests[key] += 1
            if cml.fault == "hang" and await self._hang(cml):
                return _error(503, "simulator stopping")
            if cml.fault == "error":
                return _error(500, "Internal server error (simulated fault)")
            body = await _json_body(request)
            with self._lock:
                if authenticated and _bearer(request) not in cml.tokens:
                    return _error(401, "No proper authentication was provided.")
                return handler(cml, request, body)

        return endpoint

    async def _hang(self, cml: VirtualCml) -> bool:
        """Wait while the fault lasts; True if the simulator is stopping meanwhile."""
        while cml.fault == "hang":
            if self._closing.is_set():
                return True
            await asyncio.sleep(0.02)
        return False

    def _authenticate(self, cml: VirtualCml, request: Request, body: Any) -> Response:
        token = self._login(cml, body)
        return token if isinstance(token, Response) else JSONResponse(token)

    def _auth_extended(self, cml: VirtualCml, request: Request, body: Any) -> Response:
        token = self._login(cml, body)
        if isinstance(token, Response):
            return token
        return JSONResponse(
            {"username": self.username, "id": cml.admin_id, "token": token}
            | {"admin": True, "error": None}
        )

    def _login(self, cml: VirtualCml, body: Any) -> str | Response:
        self.logins[cml.key] += 1
        if not isinstance(body, dict) or not {"username", "password"} <= body.keys():
            return _error(422, "username and password are required")
        if cml.fault == "refuse_auth" or (body["username"], body["password"]) != (
            self.username,
            self.password,
        ):
            return _error(403, "Authentication failed!")
        token = _jwt_like(cml.admin_id)
        cml.tokens[token] = None
        while len(cml.tokens) > MAX_TOKENS:  # bounded, like sessions expiring
            cml.tokens.popitem(last=False)
        return token

    def _logout(self, cml: VirtualCml, request: Request, body: Any) -> Response:
        cml.tokens.pop(_bearer(request) or "", None)
        return JSONResponse(True)

    def _system_information(self, cml: VirtualCml, request: Request, body: Any) -> Response:
        return JSONResponse(
            {"version": self.version, "ready": True, "allow_ssh_pubkey_auth": False}
            | {"oui": "52:54:00:00:00:00"}
        )

    def _users(self, cml: VirtualCml, request: Request, body: Any) -> Response:
        admin: dict[str, Any] = {"id": cml.admin_id, "username": self.username}
        admin |= {"fullname": "Administrator"}
        admin |= {"description": "", "email": "", "admin": True, "groups": []}
        return JSONResponse([admin | {"labs": list(cml.labs)}])

    @staticmethod
    def _lab(render: Callable[[VirtualCml, SimLab], Any]) -> Handler:
        def handler(cml: VirtualCml, request: Request, body: Any) -> Response:
            lab_id = request.path_params["lab_id"]
            lab = cml.labs.get(lab_id)
            if lab is None:
                return _error(404, f"Lab not found: {lab_id}")
            return JSONResponse(render(cml, lab))

        return handler


async def _json_body(request: Request) -> Any:
    if request.method != "POST":
        return None
    try:
        return json.loads(await request.body() or b"null")
    except ValueError:
        return None


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def self_signed_certificate(host: str) -> tuple[str, bytes]:
    """A self-signed certificate for `host` (PEM) and its key (PEM), as a CML host makes one.

    An EC P-256 key: made in a millisecond, where RSA takes tens of them.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cml-simulator")])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def _jwt_like(subject: str) -> str:
    """A token shaped like CML's JWT (three base64url parts); only its presence matters."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"iss": "com.cisco.virl", "sub": subject, "iat": int(time.time())}
    header = part({"typ": "JWT", "alg": "HS256"})
    return f"{header}.{part(claims)}.{secrets.token_urlsafe(32)}"
