import asyncio

import pytest

from client.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_burst_passes_at_once_then_rate_paces_the_rest() -> None:
    t = FakeTime()
    bucket = TokenBucket(1000, 500, clock=t.clock, sleep=t.sleep)

    async def go() -> None:
        await bucket.acquire(500)  # the burst
        assert t.now == 0
        for _ in range(10):
            await bucket.acquire(100)

    asyncio.run(go())
    assert t.now == pytest.approx(1.0)  # 1000 bytes beyond the burst at 1000 B/s


def test_idle_time_refills_only_up_to_the_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(100, 50, clock=t.clock, sleep=t.sleep)
    t.now = 1000.0
    assert bucket.wait_time_s(50) == 0
    assert bucket.wait_time_s(150) == pytest.approx(1.0)


def test_request_larger_than_burst_goes_into_debt_and_keeps_the_long_run_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(1000, 100, clock=t.clock, sleep=t.sleep)

    async def go() -> None:
        await bucket.acquire(2100)
        await bucket.acquire(100)

    asyncio.run(go())
    assert t.now == pytest.approx(2.1)


@pytest.mark.parametrize("rate,burst", [(0, 10), (-1, 10), (10, 0)])
def test_nonsense_rate_or_burst_is_refused_with_the_value(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TokenBucket(rate, burst)
