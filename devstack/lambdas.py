"""Running the template's Lambda handlers in this process, as Lambda would call them."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from devstack import awscalls
from devstack.template import FunctionSource

Handler = Callable[[dict[str, Any], Any], Any]

# Set per function at import time (Powertools reads it then); never shared.
PER_FUNCTION_VARIABLES = frozenset({"POWERTOOLS_SERVICE_NAME"})

# Powertools keeps some state (metrics) at class level, shared by every handler in this
# process; Lambda runs one invocation per process, so the local stack runs one at a time.
_INVOKE_LOCK = threading.Lock()


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 256
    timeout_seconds: float = 30.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.log_group_name = f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class LocalFunction:
    """One deployed function: its moto configuration and its handler, loaded from disk."""

    logical_id: str
    name: str
    arn: str
    timeout: float
    handler: Handler
    module: Any = None  # the imported handler module (the API's FastAPI app lives there)

    def invoke(self, event: dict[str, Any]) -> Any:
        """Call the handler with a fresh context, one call at a time in this process."""
        context = LambdaContext(self.name, self.arn, timeout_seconds=self.timeout)
        with _INVOKE_LOCK, awscalls.acting_as(self.logical_id):
            return self.handler(event, context)


def shared_environment(configs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The variables every function agrees on; a conflict is a template error."""
    merged: dict[str, str] = {}
    for function_id, variables in configs.items():
        for name, value in variables.items():
            if name in PER_FUNCTION_VARIABLES:
                continue
            if name in merged and merged[name] != str(value):
                raise ValueError(f"{function_id} sets {name}={value!r}, others {merged[name]!r}")
            merged[name] = str(value)
    return merged


def load_function(
    source: FunctionSource,
    configuration: Mapping[str, Any],
    overrides: Mapping[str, str] | None = None,
) -> LocalFunction:
    """Import the handler module from the function's code directory, with its environment."""
    module_name, _, attribute = source.handler.rpartition(".")
    path = source.code_dir / (module_name.replace(".", "/") + ".py")
    # Lambda puts the function's own directory on sys.path (/var/task); so do we.
    if str(source.code_dir) not in sys.path:
        sys.path.append(str(source.code_dir))
    variables = {
        name: str(value)
        for name, value in configuration.get("Environment", {}).get("Variables", {}).items()
    } | dict(overrides or {})
    with _environment(variables):
        module = _import_file(f"devstack_functions.{source.logical_id}", path)
    return LocalFunction(
        logical_id=source.logical_id,
        name=configuration["FunctionName"],
        arn=configuration["FunctionArn"],
        timeout=float(configuration.get("Timeout", 30)),
        handler=getattr(module, attribute),
        module=module,
    )


def _import_file(name: str, path: Any) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load handler module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
