"""Every AWS call any local stack of this test session made, allowed by its caller's role.

tests/conftest.py has every local stack record into one directory; this runs after every
other test (marker `after_everything`) and checks each stack's recording against that
stack's own policies. The end-to-end tests go where no scenario can think of going.
"""

from __future__ import annotations

import pytest

from devstack import awscalls, iamcheck
from tests.conftest import CALL_LOG

pytestmark = pytest.mark.after_everything


def test_every_call_recorded_in_this_session_is_allowed_by_its_deployables_policies() -> None:
    runs = iamcheck.recordings(CALL_LOG)
    if not runs:
        pytest.skip("no local stack ran in this session")
    failures = [failure for run in runs for failure in iamcheck.check_recording(run)]
    assert not failures, "\n\n".join(f.message for f in failures)
    assert any(awscalls.read_requests(run) for run in runs)
