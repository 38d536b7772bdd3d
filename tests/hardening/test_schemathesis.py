"""Property-based tests against our own OpenAPI schema on the real live server (issue 8, item 5).

Schemathesis reads ``/openapi.json`` from a running registry (real uvicorn,
real database, one published version, one enrolled device, one rollout) and
sends generated requests -- valid and invalid -- to every operation with the
credential that operation expects.  Two checks only, the ones issue 8 names:
no response is a 5xx, and every response that the schema documents matches
its schema.  ``max_examples`` is kept small so the whole file stays well under
a minute on two shared cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support.live_server import LiveServer, run_live_server

MAX_EXAMPLES = 15  # per operation: ~30 operations in well under half a minute
ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """A registry with something in it, so that generated requests reach past the 404s."""
    with run_live_server(tmp_path_factory.mktemp("schemathesis")) as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
        assert r.status_code == 201, r.text
        token = srv.enroll("car-0001", {"region": "eu"})["device_token"]
        poll = srv.device(token).post("/api/v1/device/poll", json={"line": "road-signs", "current_version": 0})
        assert poll.status_code == 200 and poll.json()["offer"], poll.text
        yield srv, token


def credential_for(path: str, srv: LiveServer, device_token: str) -> str:
    """The token the operation at ``path`` expects (devices poll/report/download; the fleet enrolls)."""
    if path.startswith("/api/v1/device/") or path.startswith("/api/v1/artifacts/"):
        return device_token
    if path == "/api/v1/devices/enroll":
        return srv.enrollment_token
    return srv.admin_token


def fuzz_operation(operation: Any, srv: LiveServer, device_token: str) -> None:
    """Generated requests for one operation; raises (with schemathesis' explanation) on the first violation."""
    headers = {"Authorization": f"Bearer {credential_for(operation.path, srv, device_token)}"}

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None, phases=[Phase.explicit, Phase.generate])
    def run(case: Any) -> None:
        case.call_and_validate(base_url=srv.url, headers=headers, timeout=30,
                               checks=[not_a_server_error, response_schema_conformance])

    run()


def test_no_5xx_and_every_response_matches_the_schema(registry: tuple[LiveServer, str]) -> None:
    srv, device_token = registry
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the schema lost operations"
    failures: list[str] = []
    for operation in operations:
        try:
            fuzz_operation(operation, srv, device_token)
        except Exception as e:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {e}")
    assert not failures, "\n\n".join(failures)
