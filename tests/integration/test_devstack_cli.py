"""`make run` and `make event` as a new user would meet them: real processes, real HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.relayproc import PYTHONPATH
from devstack.stack import free_port
from devstack.template import ROOT
from tests.sse_client import SseStream

pytestmark = pytest.mark.e2e


def environment(state_file: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    return clean | {"PYTHONPATH": PYTHONPATH, "DEVSTACK_STATE_FILE": str(state_file)}


class Runner:
    def __init__(self, process: subprocess.Popen[str], port: int, output: list[str]) -> None:
        self.process, self.port, self.output = process, port, output
        self.url = f"http://127.0.0.1:{port}"

    def worker_id(self, name: str) -> str:
        for line in self.output:
            match = re.match(rf"\s+{re.escape(name)}\s+(w-\w+)\s", line)
            if match:
                return match.group(1)
        raise AssertionError(f"{name} not in the welcome text:\n{''.join(self.output)}")


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    state_file = tmp_path / "state.json"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack", "run", "--port", str(port), "--demo-workers", "2"],
        cwd=ROOT,
        env=environment(state_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:  # bounded by the test timeout
        output.append(line)
        if "Ctrl-C stops everything" in line:
            break
    else:
        pytest.fail(f"devstack run exited early:\n{''.join(output)}")
    yield Runner(process, port, output)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def test_run_prints_where_to_connect_and_the_demo_fleet(runner: Runner) -> None:
    text = "".join(runner.output)
    assert f'curl -N -H "Authorization: Bearer $TOKEN" {runner.url}/api/events/stream' in text
    assert "make event" in text
    assert runner.worker_id("cml-lab-a").startswith("w-")
    assert "Traceback" not in text


def test_the_event_command_makes_an_event_appear_on_the_stream(
    runner: Runner, tmp_path: Path
) -> None:
    worker_id = runner.worker_id("cml-lab-b")
    headers = {"Authorization": f"Bearer {token_of(tmp_path, 'max')}"}
    with SseStream(f"{runner.url}/api/events/stream", headers=headers) as stream:
        assert stream.next().event == "connected"
        result = subprocess.run(
            [sys.executable, "-m", "devstack", "ec2-event", "--worker", "cml-lab-b"],
            cwd=ROOT,
            env=environment(tmp_path / "state.json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "running -> stopping" in result.stdout
        update = stream.wait_for(lambda e: e.event == "worker.status.updated", timeout=30)
    assert update.json()["worker_id"] == worker_id
    assert update.json()["data"]["new_status"] == "stopping"


def test_ctrl_c_stops_everything_cleanly(runner: Runner, tmp_path: Path) -> None:
    assert (tmp_path / "state.json").exists()
    runner.process.send_signal(signal.SIGINT)
    assert runner.process.wait(30) == 0
    assert not (tmp_path / "state.json").exists()


def test_the_event_command_without_a_running_stack_says_how_to_start_one(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devstack", "ec2-event"],
        cwd=ROOT,
        env=environment(tmp_path / "absent.json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "make run" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_on_a_busy_port_says_so_and_how_to_pick_another(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "devstack", "run", "--port", str(port)],
            cwd=ROOT,
            env=environment(tmp_path / "state.json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "PORT=" in result.stderr


def test_a_printed_token_lists_the_demo_fleet_and_a_create_shows_up_on_the_stream(
    runner: Runner, tmp_path: Path
) -> None:
    token = subprocess.run(
        [sys.executable, "-m", "devstack", "token", "--user", "ada"],
        cwd=ROOT,
        env=environment(tmp_path / "state.json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    listed = httpx.get(f"{runner.url}/api/workers", headers=headers, timeout=30)
    assert httpx.get(f"{runner.url}/api/events/stream", timeout=30).status_code == 401
    assert listed.status_code == 200, listed.text
    assert {w["name"] for w in listed.json()["workers"]} == {"cml-lab-a", "cml-lab-b"}
    with SseStream(f"{runner.url}/api/events/stream", headers=headers) as stream:
        stream.next()
        created = httpx.post(
            f"{runner.url}/api/workers", json={"name": "from-curl"}, headers=headers, timeout=30
        )
        assert created.status_code == 201, created.text
        event = stream.wait_for(lambda e: e.event == "worker.created", timeout=30)
    assert event.json()["data"]["worker"]["name"] == "from-curl"


def token_of(tmp_path: Path, user: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "devstack", "token", "--user", user],
        cwd=ROOT,
        env=environment(tmp_path / "state.json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
