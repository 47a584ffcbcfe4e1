"""Dedup across processes and replicas, through Redis (built only with ``cache.backend: redis``).

A mergeable request that finds no flight in its own process still creates and
registers a local ``Flight`` (so further local requests join it at once, with
no Redis round trip), then claims the cache key in Redis with one command:
``SET sluice:flight:<key> <token> NX PX <lease>`` (and ``GET`` in the same
transaction, to learn the holder's token when the claim is lost).

- Won: this process leads as it would alone. A background task follows the
  flight like any caller and mirrors it into the stream
  ``sluice:flight:<key>:<token>``: one ``XADD`` per chunk (batched by
  whatever arrived while the previous write was in flight, so the leader's own
  callers never wait on Redis), then a final entry with the answer's bytes and
  provider, usage and attempts, or the error. It renews the lease while the
  call runs; at the end it gives the stream a short expiry and deletes the
  lock (only if it still holds it). A leader whose callers all left writes an
  ``abandon`` entry instead, so followers take over at once.
- Lost: a reader task ``XREAD``s the holder's stream from its first entry and
  publishes into the local flight, so a late joiner anywhere gets every chunk
  already sent, then the rest live. When nothing arrives for a while it checks
  the lock: gone or held by another token without a final entry (the leader
  died or gave up) and nothing was yet sent, the flight claims again (lead or
  follow the new leader); if chunks were already sent to clients, the flight
  ends with a 502 ``upstream_error``, as a broken upstream stream would (its
  start cannot be sent twice).

Every client API's flights are shared: a native stream's events go through
with their SSE frames (and the leader's first entry says the stream is
native), so a follower sends them on as they came, as a local joiner would.

Redis stays an optimisation: any error or timeout while claiming or before the
first chunk falls back to running the call locally, as if no other process
existed; the link's backoff and once-per-interval warning apply.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.completions import Chunk, Completion
from proxy.config import Target
from proxy.dedup import Flight, Outcome
from proxy.errors import SluiceError
from proxy.redis_link import RedisLink, RedisUnavailable
from proxy.sse import Comment

FLIGHT_PREFIX = "sluice:flight:"

Replay = Callable[[Completion], tuple[bool, list[Chunk]]]
"""A whole answer as the stream a live one would have been: whether its chunks are the client
API's own events (``Flight.native``), and the chunks."""

# KEYS: lock. ARGV: token, lease ms. Extend the lease only while holding it.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# KEYS: lock. ARGV: token. Release only a lock still held.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class _Vanished(Exception):
    """The leader elsewhere stopped (died, gave up, or Redis failed) before a final entry."""


class RemoteFlights:
    """``lease``: how long a claim lasts without renewal (a dead leader is noticed within it);
    ``block``: the longest single ``XREAD`` wait; ``final_ttl``: how long a finished stream stays
    readable for followers that claimed just before the end."""

    def __init__(
        self, link: RedisLink, *, lease: float = 10.0, block: float = 1.0, final_ttl: float = 30.0, max_claims: int = 3
    ) -> None:
        self._link = link
        self._lease_ms = max(1, round(lease * 1000))
        self._block_ms = max(1, round(block * 1000))
        self._final_ttl_ms = max(1, round(final_ttl * 1000))
        self._max_claims = max_claims
        # Blocking reads need a socket timeout longer than the block; the link's client keeps its short one.
        self._reader = link.client(read_timeout=block + 1.0)
        self._renew = link.redis.register_script(_RENEW)
        self._release = link.redis.register_script(_RELEASE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._reader.aclose()

    # -- the entry point --

    async def settle(self, flight: Flight, key: str, replay: Replay) -> bool:
        """Claim ``key``: True when the flight was answered from another process's call;
        False when this process runs the call (leading, mirrored if the claim was won).
        ``replay``: a whole answer as this process's streaming callers' events, for a leader
        that answered as JSON."""
        lock = FLIGHT_PREFIX + key
        for _ in range(self._max_claims):
            token = secrets.token_hex(8)
            try:
                holder = await self._link.run(lambda redis: self._claim(redis, lock, token))
            except RedisUnavailable:
                break
            if holder == token:
                self._spawn(self._mirror(flight, lock, token))
                return False
            if holder is None:  # expired between the two commands: try again
                continue
            flight.remote = True
            try:
                await self._follow(flight, lock, holder, replay)
                return True
            except _Vanished:
                flight.remote = False
                if flight.chunks:  # streaming clients already have the start: it cannot be sent again
                    flight.finish(
                        Outcome(
                            error=SluiceError(
                                "the shared upstream stream broke off in another Sluice process",
                                status=502,
                                code="upstream_error",
                            ),
                            target=flight.target,
                            remote=True,
                        )
                    )
                    return True
        flight.remote = False
        return False

    async def _claim(self, redis: Redis, lock: str, token: str) -> str | None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(lock, token, nx=True, px=self._lease_ms)
            pipe.get(lock)
            _, holder = await pipe.execute()
        return holder.decode() if holder is not None else None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- leader side --

    async def _mirror(self, flight: Flight, lock: str, token: str) -> None:
        stream = f"{lock}:{token}"
        renewer = asyncio.get_running_loop().create_task(self._renew_lease(lock, token))
        try:
            first = True
            async for batch in flight.follow():
                if type(batch) is Comment:  # comments stay in this process
                    continue
                entries = []
                for chunk in batch:
                    fields: dict[str, Any] = {"k": "c", "c": chunk.body}
                    if chunk.frame is not None:  # a native event: its SSE frame, event line included
                        fields["f"] = chunk.frame
                    if first and flight.target is not None:
                        fields.update(p=flight.target.provider, m=flight.target.model)
                        if flight.native:
                            fields["n"] = b"1"
                        first = False
                    entries.append(fields)
                await self._link.run(lambda redis, entries=entries: self._append(redis, stream, entries, self._lease_ms * 3))
            outcome = flight.outcome
            assert outcome is not None
            final = _final_entry(outcome)

            async def finish(redis: Redis) -> None:
                await self._append(redis, stream, [final], self._final_ttl_ms)
                await self._release(keys=[lock], args=[token])

            await self._link.run(finish)
        except RedisUnavailable:
            pass  # no more writes: the lease runs out and the followers take over
        finally:
            renewer.cancel()

    @staticmethod
    async def _append(redis: Redis, stream: str, entries: list[dict[str, Any]], ttl_ms: int) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(stream, fields)
            pipe.pexpire(stream, ttl_ms)
            await pipe.execute()

    async def _renew_lease(self, lock: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self._link.run(lambda redis: self._renew(keys=[lock], args=[token, self._lease_ms]))
            except RedisUnavailable:
                pass

    # -- follower side --

    async def _follow(self, flight: Flight, lock: str, token: str, replay: Replay) -> None:
        """Feed the local flight from the leader's stream until its final entry."""
        stream = f"{lock}:{token}"
        last = "0-0"
        while True:
            try:
                answer = await self._reader.xread({stream: last}, count=1000, block=self._block_ms)
            except (RedisError, OSError) as exc:
                self._link.failed(exc)
                raise _Vanished from exc
            if not answer:
                await self._check_leader(lock, token, stream, last)
                continue
            for entry_id, fields in answer[0][1]:
                last = entry_id
                if _apply(flight, fields, replay):
                    return

    async def _check_leader(self, lock: str, token: str, stream: str, last: str) -> None:
        try:
            holder = await self._link.run(lambda redis: redis.get(lock))
        except RedisUnavailable as exc:
            raise _Vanished from exc
        if holder is not None and holder.decode() == token:
            return
        # The lock went: normally because the final entry was written just before; read once more.
        try:
            answer = await self._link.run(lambda redis: redis.xread({stream: last}, count=1000))
        except RedisUnavailable as exc:
            raise _Vanished from exc
        if not answer or not any(fields.get(b"k") in (b"done", b"error") for _, fields in answer[0][1]):
            raise _Vanished


def _final_entry(outcome: Outcome) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "attempts": outcome.attempts,
        "retries": outcome.retries,
        "fallbacks": outcome.fallbacks,
        "upstream_seconds": outcome.upstream_seconds,
        "first_chunk_seconds": outcome.first_chunk_seconds,
        "tokens_saved": outcome.tokens_saved,
        "trimmed_messages": outcome.trimmed_messages,
        "usage": outcome.usage,
    }
    if outcome.target is not None:
        meta.update(provider=outcome.target.provider, model=outcome.target.model)
    error = outcome.error
    if error is not None and error.code == "cancelled":
        return {"k": "abandon"}
    if error is not None:
        meta["error"] = {
            "message": error.message,
            "status": error.status,
            "code": error.code,
            "type": error.type,
            "param": error.param,
            "retry_after": error.retry_after,
        }
        return {"k": "error", "meta": orjson.dumps(meta)}
    assert outcome.completion is not None
    return {"k": "done", "body": outcome.completion.body, "meta": orjson.dumps(meta)}


def _apply(flight: Flight, fields: dict[bytes, bytes], replay: Replay) -> bool:
    """One stream entry into the local flight; True when it ended the flight."""
    kind = fields.get(b"k")
    if kind == b"c":
        if b"p" in fields and flight.target is None:
            flight.target = Target(fields[b"p"].decode(), fields[b"m"].decode())
            flight.native = b"n" in fields
        if flight.streaming:  # a JSON flight needs only the final answer: nothing is sent before it
            body = fields[b"c"]
            flight.publish([Chunk(body, orjson.loads(body), fields.get(b"f"))])
        return False
    if kind == b"abandon":
        raise _Vanished
    if kind not in (b"done", b"error"):
        return False
    meta = orjson.loads(fields[b"meta"])
    target = Target(meta["provider"], meta["model"]) if meta.get("provider") else None
    outcome = Outcome(
        usage=meta.get("usage"),
        target=target,
        attempts=meta.get("attempts", 0),
        retries=meta.get("retries", 0),
        fallbacks=meta.get("fallbacks", 0),
        upstream_seconds=meta.get("upstream_seconds", 0.0),
        first_chunk_seconds=meta.get("first_chunk_seconds"),
        tokens_saved=meta.get("tokens_saved", 0),
        trimmed_messages=meta.get("trimmed_messages", 0),
        remote=True,
    )
    if kind == b"error":
        error = meta["error"]
        outcome.error = SluiceError(
            error["message"],
            status=error["status"],
            code=error["code"],
            type=error["type"],
            param=error["param"],
            retry_after=error["retry_after"],
        )
    else:
        body = fields[b"body"]
        outcome.completion = Completion(body, orjson.loads(body))
        if flight.streaming and not flight.chunks:  # the leader answered as JSON: stream it as a replay
            flight.native, chunks = replay(outcome.completion)
            flight.publish(chunks)
    if flight.target is None:
        flight.target = target
    flight.first_chunk_seconds = outcome.first_chunk_seconds
    flight.finish(outcome)
    return True
