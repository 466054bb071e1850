"""The two servers under test, behind one small interface the scenarios drive.

`RelayServer`: `relay_server.py` in a child process (uvicorn, one process), events in
through its loopback control socket. `PushpinServer`: the Debian `pushpin` (runner,
condure, zurl, proxy, handler) in front of `origin.py`, events in through Pushpin's HTTP
publish endpoint, pre-framed as SSE with exactly the bytes our relay sends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.relaybench.common import (
    CHANNEL,
    LOOPBACK,
    STREAM_PATH,
    child_setup,
    descendants,
    free_port,
    nofile_limit,
    process_name,
    wait_port,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "benchmarks" / "pushpin"
PYTHONPATH = os.pathsep.join(
    str(ROOT / part) for part in ("layers/cmlfleet/python", "relay_service", "functions/api", ".")
)


def python_env(extra_path: str | None = None) -> dict[str, str]:
    path = os.pathsep.join([extra_path, PYTHONPATH]) if extra_path else PYTHONPATH
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM the process we started, SIGKILL it if it does not go in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def probe_stream(port: int, timeout: float, authorization: str | None = None) -> bool:
    """One SSE request: does a 200 with a first frame come back?"""
    deadline = time.monotonic() + timeout
    credentials = f"Authorization: {authorization}\r\n" if authorization else ""
    request = f"GET {STREAM_PATH} HTTP/1.1\r\nHost: bench\r\n{credentials}\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                sock.sendall(request)
                received = b""
                for _ in range(100):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                    if b" 200 " in received.split(b"\r\n", 1)[0] and b"\n\n" in received:
                        return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class RelayServer:
    """The relay process; `extra_args`, `environment` and `probe_authorization` serve
    benchmarks that configure it further (token authentication, limits: hostile.py)."""

    name = "relay"

    def __init__(
        self,
        workdir: Path,
        max_seconds: float,
        extra_path: str | None = None,
        gc: str = "",
        *,
        extra_args: list[str] | None = None,
        environment: dict[str, str] | None = None,
        probe_authorization: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.max_seconds = max_seconds
        self.gc = gc  # what-if GC setting for the relay process; "" = as production
        self.extra_path = extra_path  # e.g. a directory with uvloop and httptools (what-if)
        self.extra_args = extra_args or []
        self.environment = environment or {}
        self.probe_authorization = probe_authorization
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._control: socket.socket | None = None
        self._reader: Any = None
        self._log: Any = None

    def start(self) -> None:
        self.port, control_port = free_port(), free_port()
        self._log = (self.workdir / "relay.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [
                sys.executable,
                "-m",
                "benchmarks.relaybench.relay_server",
                "--port",
                str(self.port),
                "--control-port",
                str(control_port),
                "--max-seconds",
                str(self.max_seconds),
                "--gc",
                self.gc,
                *self.extra_args,
            ],
            cwd=ROOT,
            env=python_env(self.extra_path) | self.environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
        if not (wait_port(self.port, 30) and probe_stream(self.port, 15, self.probe_authorization)):
            self.stop()
            raise RuntimeError(f"relay did not start; see {self.workdir / 'relay.log'}")
        self._control = socket.create_connection((LOOPBACK, control_port), timeout=60)
        self._control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = self._control.makefile("rb")

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process and self.process.poll() is None else []

    def components(self) -> dict[str, int]:
        return {"uvicorn (relay)": self.process.pid} if self.process else {}

    def publish(self, events: list[Any]) -> None:
        assert self._control is not None
        lines = [event.to_json().encode() + b"\n" for event in events]
        self._control.sendall(b"".join(lines) + b"\n")

    def command(self, cmd: str, **args: Any) -> Any:
        assert self._control is not None
        self._control.sendall(b"!" + json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        line = self._reader.readline(10_000_000)
        return json.loads(line) if line else None

    def server_stats(self) -> dict[str, Any]:
        return self.command("stats") or {}

    def stop(self) -> None:
        for closable in (self._reader, self._control):
            if closable is not None:
                with contextlib.suppress(OSError):
                    closable.close()
        self._control = self._reader = None
        stop_process(self.process)
        if self._log is not None:
            self._log.close()


class PushpinServer:
    name = "pushpin"

    def __init__(
        self, workdir: Path, max_seconds: float, message_rate: int, message_hwm: int
    ) -> None:
        self.workdir = workdir
        self.max_seconds = max_seconds
        self.message_rate = message_rate
        self.message_hwm = message_hwm
        self.process: subprocess.Popen[bytes] | None = None
        self.origin: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.publish_port = 0
        self._http: http.client.HTTPConnection | None = None
        self._logs: list[Any] = []
        self.published_items = 0

    @staticmethod
    def available() -> bool:
        return all(shutil.which(b) for b in ("pushpin", "condure", "zurl"))

    def _render(self, base: Path, origin_port: int) -> Path:
        for sub in ("run", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        values = {
            "rundir": str(base / "run"),
            "logdir": str(base / "log"),
            "http_port": str(self.port),
            "publish_port": str(self.publish_port),
            "push_in_port": str(free_port()),
            "push_in_sub_port": str(free_port()),
            "command_port": str(free_port()),
            "message_rate": str(self.message_rate),
            "message_hwm": str(self.message_hwm),
            "client_maxconn": "50000",
            "log_level": "1",
            "sig_key": secrets.token_hex(16),
            "origin_port": str(origin_port),
        }
        for name in ("pushpin.conf", "routes"):
            template = string.Template((TEMPLATES / f"{name}.template").read_text())
            (base / name).write_text(template.substitute(values))
        return base / "pushpin.conf"

    def start(self) -> None:
        self.port, self.publish_port, origin_port = free_port(), free_port(), free_port()
        base = self.workdir / f"pushpin-{self.port}"
        config = self._render(base, origin_port)
        origin_log = (base / "origin.log").open("ab")
        pushpin_log = (base / "pushpin.out").open("ab")
        self._logs = [origin_log, pushpin_log]
        self.origin = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [
                sys.executable,
                "-m",
                "benchmarks.relaybench.origin",
                "--port",
                str(origin_port),
                "--max-seconds",
                str(self.max_seconds),
            ],
            cwd=ROOT,
            env=python_env(),
            stdout=origin_log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
        if not wait_port(origin_port, 20):
            self.stop()
            raise RuntimeError(f"the GRIP origin did not start; see {base / 'origin.log'}")
        self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [shutil.which("pushpin") or "/usr/bin/pushpin", "--config", str(config)],
            cwd=base,
            stdout=pushpin_log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
        ready = wait_port(self.port, 30) and wait_port(self.publish_port, 30)
        if not (ready and probe_stream(self.port, 20)):
            self.stop()
            raise RuntimeError(f"pushpin did not start; see {base}/log and {base}/pushpin.out")
        self._http = http.client.HTTPConnection(LOOPBACK, self.publish_port, timeout=30)

    def pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return descendants(self.process.pid)

    def components(self) -> dict[str, int]:
        return {process_name(pid): pid for pid in self.pids()}

    def publish(self, events: list[Any]) -> None:
        from relay.frames import bus_event_frame

        items = [
            {
                "channel": CHANNEL,
                "id": event.id,
                "formats": {"http-stream": {"content": bus_event_frame(event).decode()}},
            }
            for event in events
        ]
        body = json.dumps({"items": items}).encode()
        for attempt in range(2):  # one reconnect if the keep-alive connection was dropped
            assert self._http is not None
            try:
                self._http.request("POST", "/publish/", body, {"Content-Type": "application/json"})
                response = self._http.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException):
                self._http.close()
                self._http = http.client.HTTPConnection(LOOPBACK, self.publish_port, timeout=30)
                if attempt:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"pushpin publish: {response.status} {answer[:200]!r}")
            self.published_items += len(items)
            return

    def server_stats(self) -> dict[str, Any]:
        return {"published_items": self.published_items}

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        # The runner stops its services; any it leaves behind are ours: killed by pid,
        # if that pid still runs the same program.
        started = {pid: process_name(pid) for pid in self.pids()[1:]}
        stop_process(self.process)
        for pid, name in started.items():
            if process_name(pid) == name:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        stop_process(self.origin)
        for log in self._logs:
            log.close()
        self._logs = []


def nofile_report(pids: dict[str, int]) -> dict[str, Any]:
    return {name: nofile_limit(pid) for name, pid in pids.items()}
