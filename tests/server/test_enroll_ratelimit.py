"""The enrolment rate limiter (pure): one bucket per key, every key of a request must have a token."""

from __future__ import annotations

from server.devices.ratelimit import RateLimiter


def test_a_request_needs_a_token_from_its_address_and_its_credential_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=1.0, burst=2, clock=lambda: now[0])
    assert limiter.take("addr:a", "token:x") == 0.0
    assert limiter.take("addr:a", "token:x") == 0.0
    assert limiter.take("addr:a", "token:y") == 1.0  # the address is spent, whatever the credential
    assert limiter.take("addr:b", "token:x") == 1.0  # the credential is spent, whatever the address
    assert limiter.take("addr:b", "token:y") == 0.0  # both fresh
    now[0] = 0.5
    assert limiter.take("addr:a", "token:z") == 0.5  # refused requests took nothing; half a token back so far
    now[0] = 1.0
    assert limiter.take("addr:a", "token:z") == 0.0


def test_a_zero_rate_refuses_for_ever_once_the_burst_is_spent() -> None:
    limiter = RateLimiter(rate_per_s=0.0, burst=1, clock=lambda: 0.0)
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == float("inf")
