"""Token buckets: ``rate`` tokens a second up to ``burst`` per key, for one named limit.

In one process they live in memory. With Redis configured (a ``redis://`` broker) they live in
Redis, updated by one Lua script on Redis's own clock, so N API replicas share one limit
instead of allowing N times it. If Redis cannot be reached the process falls back to its own
buckets for that call (a limit is a guard, not a reason to refuse service).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("adalora.api.ratelimit")


class RateLimiter(Protocol):
    # True where acquire waits on the network: callers take it off the event loop.
    blocking: bool

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens for ``key`` (at most a full bucket, so any request can pass
        once the bucket is full); 0 on success, else seconds until they are there."""


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """In-process buckets; a rate of 0 disables the limit."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.blocking = False
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, cost: float = 1.0) -> float:
        if self.rate <= 0:
            return 0.0
        cost = min(float(cost), float(self.burst))
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return 0.0
            return (cost - bucket.tokens) / self.rate


# KEYS[1] the bucket; ARGV: rate, burst, cost. Returns the wait in microseconds (0: taken).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1]) or burst
local updated = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return math.floor(wait * 1e6)
"""


class RedisTokenBuckets:
    """Buckets shared by every process that uses the same Redis and limit name."""

    def __init__(self, client: Any, name: str, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.blocking = rate > 0
        self._prefix = f"adalora:ratelimit:{name}:"
        self._take = client.register_script(_TAKE)
        self._fallback = TokenBuckets(rate, burst)

    def acquire(self, key: str, cost: float = 1.0) -> float:
        if self.rate <= 0:
            return 0.0
        cost = min(float(cost), float(self.burst))
        try:
            micros = self._take(keys=[self._prefix + key], args=[self.rate, self.burst, cost])
        except Exception as exc:  # Redis down: limit this process on its own meanwhile
            log.warning("rate limit store unreachable (%s); using in-process buckets", exc)
            return self._fallback.acquire(key, cost)
        return int(micros) / 1e6


def make_limiter(name: str, rate: float, burst: int, redis_url: str | None) -> RateLimiter:
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return RedisTokenBuckets(client, name, rate, burst)
    return TokenBuckets(rate, burst)
