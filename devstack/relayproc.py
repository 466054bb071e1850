"""The relay as a child process under uvicorn (`python -m relay`), as it runs on Fargate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO

from devstack.stack import free_port
from devstack.template import ROOT

PYTHONPATH = os.pathsep.join(
    [str(ROOT / "layers" / "cmlfleet" / "python"), str(ROOT / "relay_service"), str(ROOT)]
)


class RelayProcess:
    """Start, probe and stop one relay process.

    `url` is where clients connect; `metrics_url` is the Prometheus endpoint, on its own
    port (`metrics_port`, a free one unless the caller picks it) as on Fargate.
    """

    def __init__(
        self,
        environment: Mapping[str, str],
        *,
        port: int,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        output: IO[bytes] | None = None,
    ) -> None:
        self.port, self.host = port, host
        self.metrics_port = metrics_port or free_port(host)
        self.url = f"http://{host}:{port}"
        self.metrics_url = f"http://{host}:{self.metrics_port}/metrics"
        self._environment = {
            **os.environ,
            **environment,
            "RELAY_HOST": host,
            "RELAY_PORT": str(port),
            "RELAY_METRICS_PORT": str(self.metrics_port),
            "PYTHONPATH": PYTHONPATH,
            "PYTHONUNBUFFERED": "1",
        }
        self._output = output
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float | None = 30.0) -> RelayProcess:
        """Start the process and wait until it answers (`ready_timeout=None`: do not wait)."""
        self.process = subprocess.Popen(
            # `python -m relay`, recording its AWS calls if the local stack records them.
            [sys.executable, "-m", "devstack.relayrun"],
            env=self._environment,
            stdout=self._output,
            stderr=subprocess.STDOUT if self._output else None,
        )
        if ready_timeout is not None:
            self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"relay exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/events/health", timeout=2):  # noqa: S310
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise TimeoutError(f"relay not ready at {self.url} after {timeout} s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the relay says goodbye to its clients), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
