"""HTTP Range parsing for artifact downloads (pure), and HEAD over real HTTP."""

from __future__ import annotations

import pytest

from server.artifacts.service import parse_range
from server.errors import RangeNotSatisfiable

ETAG = '"abc"'


@pytest.mark.parametrize(("header", "if_range", "want"), [
    (None, None, None),
    ("bytes=0-", None, (0, 100)),
    ("bytes=10-", None, (10, 100)),
    ("bytes=10-19", None, (10, 20)),
    ("bytes=90-200", None, (90, 100)),
    ("bytes=-30", None, (70, 100)),
    ("bytes=-300", None, (0, 100)),
    ("bytes=10-", ETAG, (10, 100)),
    ("bytes=10-", '"other"', None),      # If-Range mismatch: whole artifact
    ("bytes=0-1,5-6", None, None),       # multiple ranges: whole artifact
    ("items=0-5", None, None),           # unknown unit: ignored
])
def test_range_header_selects_the_slice(header: str | None, if_range: str | None,
                                        want: tuple[int, int] | None) -> None:
    assert parse_range(header, if_range, ETAG, 100) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-160", "bytes=-0", "bytes=20-10"])
def test_unsatisfiable_range_is_416(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, None, ETAG, 100)
