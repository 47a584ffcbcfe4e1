"""The request path (ARCHITECTURE.md), nothing else.

parse → authenticate and limit → route → cache lookup → join or lead a flight
→ (in the flight: compress, then for each target, breaker and retries around
the provider call) → store, account → answer as JSON or SSE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy.accounting import Prices
from proxy.cache.base import CacheBackend, CachedAnswer, CacheUnavailable
from proxy.cache.keys import cache_key, identity_of
from proxy.completions import SSE_DONE, Chunk, Completion, StreamAssembler, replay_chunks
from proxy.compression import DEFAULT_OUTPUT_RESERVE, compress
from proxy.config import Config, Target
from proxy.dedup import Flight, FlightRegistry, Outcome
from proxy.disconnect import DisconnectGuard
from proxy.errors import SluiceError, error_event, error_response
from proxy.hit_lane import HitLane
from proxy.limits import Limiter, Principal, has_limits
from proxy.providers.base import Call, ChunkStream, Provider
from proxy.requests import (
    CHAT,
    EMBEDDINGS,
    ParsedRequest,
    RequestOptions,
    parse_chat,
    parse_embeddings,
    read_headers,
    read_json_body,
    request_options,
)
from proxy.resilience import Attempts, Resilience
from proxy.responses import Answer, EventStream, JSONAnswer
from proxy.routing import Route, Router
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord
from proxy.tokens import context_window, count_messages, count_text, load_encoding

if TYPE_CHECKING:
    from proxy.remote_flights import RemoteFlights

Runner = Callable[[Flight], Awaitable[None]]


@dataclass(slots=True)
class Job:
    """One upstream job that a flight runs: what to send and where."""

    kind: str
    body: dict[str, Any]
    raw: bytes
    route: Route
    options: RequestOptions
    authorization: str | None
    request_id: str
    cache_key: str | None


class Pipeline:
    def __init__(
        self,
        config: Config,
        router: Router,
        providers: dict[str, Provider],
        cache: CacheBackend | None,
        resilience: Resilience,
        limiter: Limiter,
        prices: Prices,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.router = router
        self.providers = providers
        self.cache = cache
        self.resilience = resilience
        self.limiter = limiter
        self.prices = prices
        self.telemetry = telemetry
        self.flights = FlightRegistry()
        self.remote_flights: RemoteFlights | None = None  # set by Gateway with the Redis backend
        self.lane: HitLane | None = None  # set by Gateway with the memory backend
        self._dedup = config.dedup.enabled
        self._pass_credentials = not config.auth.keys
        self._windows: dict[str, int | None] = {}

    # -- endpoints --

    async def chat_completions(self, request: Request) -> Answer:
        return await self._serve(request, CHAT)

    async def embeddings(self, request: Request) -> Answer:
        return await self._serve(request, EMBEDDINGS)

    async def _serve(self, request: Request, kind: str) -> Answer:
        record: RequestRecord = request.scope["state"]["record"]
        record.tracked = True
        headers = read_headers(request.scope)
        principal = self.limiter.authenticate(headers.authorization)
        record.key_name = principal.name
        raw, body = await read_json_body(request, headers, self.config.server.max_body_bytes)
        record.bytes_in = len(raw)
        parsed = parse_chat(body) if kind == CHAT else parse_embeddings(body)
        record.model, record.stream, record.body = parsed.model, parsed.stream, body
        options = request_options(headers, self.config.compression.mode)
        route = self.router.resolve(parsed.model)
        await self.limiter.admit(principal)
        authorization = headers.authorization if self._pass_credentials else None
        key = None
        if self.cache is not None or self._dedup:
            identity = identity_of(headers.authorization, principal.name)
            key = cache_key(kind, route.key, body, identity, options.compression)
        job = Job(kind, body, raw, route, options, authorization, record.request_id, key)

        answer = await self._lookup(job, record)
        if answer is not None:
            response, payload = self._cached_response(answer, route, parsed, record)
            if self.lane is not None and (principal.key is None or not has_limits(principal.key)):
                # a key with limits must be counted, and may be refused, on every request
                self.lane.learn(request.scope, raw, job.cache_key, answer, response.raw_headers, payload, parsed.stream, record)  # type: ignore[arg-type]
            return response

        flight, run = self._flight_for(job, parsed.stream, record)
        if parsed.stream:
            if run is not None:
                flight.start(run)
            return await self._stream_response(request, flight, parsed.include_usage, record, principal)
        return await self._json_response(request, flight, run, record, principal)

    # -- cache --

    async def _lookup(self, job: Job, record: RequestRecord) -> CachedAnswer | None:
        if self.cache is None:
            record.cache = "off"
            return None
        if job.options.no_cache or job.options.no_store:
            record.cache = "bypass"
            return None
        try:
            answer = await self.cache.get(job.cache_key)  # type: ignore[arg-type]
        except CacheUnavailable:
            record.cache = "bypass"
            return None
        record.cache = "hit" if answer is not None else "miss"
        return answer

    async def _store(self, job: Job, completion: Completion, provider: str) -> None:
        if self.cache is None or job.options.no_store or job.cache_key is None:
            return
        ttl = job.options.ttl if job.options.ttl is not None else self.config.cache.ttl_seconds
        if ttl <= 0:
            return
        try:
            await self.cache.set(job.cache_key, CachedAnswer(completion, provider), ttl)
        except CacheUnavailable:
            pass

    # -- flights --

    def _flight_for(self, job: Job, streaming: bool, record: RequestRecord) -> tuple[Flight, Runner | None]:
        """Join an identical flight in progress, or create one and return how to run it."""
        mergeable = self._dedup and job.cache_key is not None and not (job.options.no_cache or job.options.no_store)
        if mergeable:
            flight = self.flights.get(job.cache_key)  # type: ignore[arg-type]
            if flight is not None:
                record.dedup = True
                flight.join()
                return flight, None
        flight = Flight(streaming)
        flight.join()
        if mergeable:
            self.flights.add(job.cache_key, flight)  # type: ignore[arg-type]
        return flight, lambda f: self._run(f, job, mergeable)

    async def _run(self, flight: Flight, job: Job, registered: bool) -> None:
        """The upstream side of a flight: runs once, whoever asked."""
        if registered and self.remote_flights is not None:
            try:
                shared = await self.remote_flights.settle(flight, job.cache_key)  # type: ignore[arg-type]
            except BaseException:
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
                raise
            if shared:  # answered by an identical call in another process
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
                return
        attempts = Attempts()
        try:
            if job.kind == CHAT:  # compression, trimming and answers without usage count tokens
                for target in job.route.targets:
                    await load_encoding(target.model)
            started = time.perf_counter()
            if flight.streaming:
                result = await self.resilience.run(
                    job.route.targets, lambda target: self._open_stream(flight, job, target), attempts
                )
                flight.target = result.target
                completion = await self._pump(flight, result.value, started)
            else:
                result = await self.resilience.run(
                    job.route.targets, lambda target: self._call(flight, job, target), attempts
                )
                flight.target = result.target
                completion = result.value
            outcome = Outcome(completion=completion, usage=_usage_of(job, completion), target=result.target)
        except SluiceError as exc:
            outcome = Outcome(error=exc, target=flight.target)
        finally:
            if registered:
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
        outcome.attempts, outcome.retries, outcome.fallbacks = attempts.count, attempts.retries, attempts.fallbacks
        outcome.upstream_seconds = time.perf_counter() - started
        outcome.first_chunk_seconds = flight.first_chunk_seconds
        outcome.tokens_saved, outcome.trimmed_messages = flight.tokens_saved, flight.trimmed_messages
        flight.finish(outcome)
        if outcome.completion is not None and outcome.target is not None:
            await self._store(job, outcome.completion, outcome.target.provider)

    def _call_for(self, flight: Flight, job: Job, target: Target) -> Call:
        body, raw, flight.tokens_saved, flight.trimmed_messages = self._compressed(job, target)
        return Call(target.model, body, raw, job.authorization, job.request_id)

    def _context_window(self, model: str) -> int | None:
        if model not in self._windows:
            self._windows[model] = context_window(model, self.config.context_windows)
        return self._windows[model]

    def _compressed(self, job: Job, target: Target) -> tuple[dict[str, Any], bytes | None, int, int]:
        if job.kind != CHAT:
            return job.body, job.raw, 0, 0
        window = self._context_window(target.model) if self.config.compression.trim_history else None
        if job.options.compression == "off" and (window is None or _surely_fits(job, window)):
            return job.body, job.raw, 0, 0
        result = compress(
            job.body["messages"],
            job.options.compression,
            model=target.model,
            context_window=window,
            max_output_tokens=_max_output_tokens(job.body),
            trim=self.config.compression.trim_history,
        )
        if not result.changed:
            return job.body, job.raw, 0, 0
        return {**job.body, "messages": result.messages}, None, result.tokens_saved, result.trimmed_messages

    async def _call(self, flight: Flight, job: Job, target: Target) -> Completion:
        provider = self.providers[target.provider]
        call = self._call_for(flight, job, target)
        if job.kind == EMBEDDINGS:
            return await provider.embed(call)
        return await provider.chat(call)

    async def _open_stream(self, flight: Flight, job: Job, target: Target) -> ChunkStream:
        return await self.providers[target.provider].chat_stream(self._call_for(flight, job, target))

    async def _pump(self, flight: Flight, stream: ChunkStream, started: float) -> Completion:
        """Forward each chunk to the flight as it arrives; assemble the whole for the cache."""
        assembler = StreamAssembler()
        try:
            async for batch in stream:
                if flight.first_chunk_seconds is None:
                    flight.first_chunk_seconds = time.perf_counter() - started
                for chunk in batch:
                    assembler.add(chunk.data)
                flight.publish(batch)
        finally:
            await stream.aclose()
        completion = assembler.completion()
        if not assembler.finished:
            raise SluiceError("upstream stream ended without a finish reason", status=502, code="upstream_error")
        return completion

    # -- answers --

    def _headers(self, record: RequestRecord) -> dict[str, str]:
        headers = {
            "X-Sluice-Cache": record.cache or "off",
            "X-Sluice-Attempts": str(record.attempts),
            "X-Sluice-Tokens-Saved": str(record.tokens_saved),
            "X-Sluice-Overhead-Ms": f"{record.overhead_ms():.3f}",
        }
        if record.provider:
            headers["X-Sluice-Provider"] = record.provider
        if record.dedup:
            headers["X-Sluice-Dedup"] = "joined"
        if record.trimmed_messages:
            headers["X-Sluice-Trimmed-Messages"] = str(record.trimmed_messages)
        headers.update(self.limiter.rate_headers(record.key_name))
        return headers

    def _cached_response(
        self, answer: CachedAnswer, route: Route, parsed: ParsedRequest, record: RequestRecord
    ) -> tuple[JSONAnswer | EventStream, bytes]:
        """The answer for a cache hit, and its body (a whole SSE stream for a streaming client)."""
        record.provider, record.completion = answer.provider, answer.completion
        usage = answer.completion.usage
        if usage:
            model = next((t.model for t in route.targets if t.provider == answer.provider), route.targets[0].model)
            record.tokens_saved_cache = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
            record.cost_saved_usd = self.prices.cost(answer.provider, model, usage)
        headers = self._headers(record)
        if not parsed.stream:
            return JSONAnswer(answer.completion.body, headers), answer.completion.body
        payload = _sse_payload(replay_chunks(answer.completion.data, parsed.include_usage))
        return EventStream(_once(payload), headers), payload

    def _account(self, outcome: Outcome, record: RequestRecord, principal: Principal) -> None:
        target = outcome.target
        record.dedup = record.dedup or outcome.remote
        if not record.dedup:  # a joined request made no attempts of its own
            record.attempts, record.retries, record.fallbacks = outcome.attempts, outcome.retries, outcome.fallbacks
        record.upstream_seconds = outcome.upstream_seconds
        record.ttft_seconds = outcome.first_chunk_seconds
        if target is not None:
            record.provider, record.upstream_model = target.provider, target.model
        completion = outcome.completion
        if completion is None or target is None:
            return
        record.completion = completion
        usage = outcome.usage
        record.tokens_saved, record.trimmed_messages = outcome.tokens_saved, outcome.trimmed_messages
        cost = self.prices.cost(target.provider, target.model, usage)
        if record.dedup:
            record.cost_saved_usd = cost
            return
        if usage:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
        record.cost_usd = cost
        record.cost_saved_usd = self.prices.input_cost(target.provider, target.model, record.tokens_saved)
        self.limiter.charge(principal, record.prompt_tokens + record.completion_tokens, cost)

    async def _json_response(
        self, request: Request, flight: Flight, run: Runner | None, record: RequestRecord, principal: Principal
    ) -> Answer:
        outcome = await _outcome(request, flight, run)
        if outcome is None:
            record.error_code = "client_disconnected"
            return Response(status_code=499)
        self._account(outcome, record, principal)
        if outcome.error is not None:
            record.error_code = outcome.error.code
            return error_response(outcome.error, self._headers(record))
        completion = outcome.completion
        assert completion is not None
        return JSONAnswer(completion.body, self._headers(record))

    async def _stream_response(
        self, request: Request, flight: Flight, include_usage: bool, record: RequestRecord, principal: Principal
    ) -> Answer:
        if not flight.streaming:
            outcome = await _outcome(request, flight, None)
            if outcome is None:
                return Response(status_code=499)
            self._account(outcome, record, principal)
            if outcome.error is not None:
                record.error_code = outcome.error.code
                return error_response(outcome.error, self._headers(record))
            assert outcome.completion is not None
            payload = _sse_payload(replay_chunks(outcome.completion.data, include_usage))
            return EventStream(_once(payload), self._headers(record))
        if not await _wait_started(request, flight):
            return Response(status_code=499)
        if not flight.chunks and flight.outcome is not None and flight.outcome.error is not None:
            flight.leave()
            self._account(flight.outcome, record, principal)
            record.error_code = flight.outcome.error.code
            return error_response(flight.outcome.error, self._headers(record))
        if flight.target is not None:
            record.provider = flight.target.provider
        record.dedup = record.dedup or flight.remote
        events = self._follow(flight, include_usage, record, principal)
        return EventStream(events, self._headers(record))

    async def _follow(
        self, flight: Flight, include_usage: bool, record: RequestRecord, principal: Principal
    ) -> AsyncGenerator[bytes, None]:
        try:
            async for batch in flight.follow():
                payload = b"".join(c.sse for c in batch if include_usage or not c.is_usage_only)
                if payload:
                    yield payload
            outcome = flight.outcome
            assert outcome is not None
            self._account(outcome, record, principal)
            if outcome.error is not None:
                record.error_code = outcome.error.code
                yield error_event(outcome.error)
            else:
                yield SSE_DONE
        finally:
            flight.leave()


def _usage_of(job: Job, completion: Completion) -> dict[str, Any] | None:
    """The upstream's own usage; a tiktoken estimate only when it gave none."""
    usage = completion.usage
    if usage is not None or job.kind != CHAT:
        return usage
    model = job.route.targets[0].model
    prompt = count_messages(job.body["messages"], model)
    text = "".join(
        (choice.get("message") or {}).get("content") or "" for choice in completion.data.get("choices") or ()
    )
    output = count_text(text, model) if text else 0
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output, "estimated": True}


def _surely_fits(job: Job, window: int) -> bool:
    """Whether the prompt fits without counting: a text token is at least one byte of
    the JSON body, and the body has no parts counted by a fixed size (images, audio, files)."""
    raw = job.raw
    if b'"image_url"' in raw or b'"input_audio"' in raw or b'"file"' in raw:
        return False
    reserve = _max_output_tokens(job.body) or min(DEFAULT_OUTPUT_RESERVE, window // 4)
    return len(raw) + reserve <= window


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _sse_payload(chunks: list[Chunk]) -> bytes:
    return b"".join(chunk.sse for chunk in chunks) + SSE_DONE


async def _once(payload: bytes) -> AsyncGenerator[bytes, None]:
    """A whole stream already at hand: one write."""
    yield payload


async def _outcome(request: Request, flight: Flight, run: Runner | None) -> Outcome | None:
    """Run the flight here (``run``) or wait for it; None when the client left first."""
    departed = False

    def depart() -> None:
        nonlocal departed
        if not departed:
            departed = True
            flight.leave()  # the last caller out cancels the call, even when it runs in this task

    def depart_and_stop() -> None:
        depart()
        guard.cancel_task()

    guard = DisconnectGuard(request.receive, depart if run is not None else depart_and_stop)
    try:
        async with guard:
            if run is not None:
                await flight.run_here(run)
            elif flight.outcome is None:
                await asyncio.shield(flight.done)
    finally:
        depart()
    return None if guard.gone else flight.outcome


async def _wait_started(request: Request, flight: Flight) -> bool:
    """Wait for the stream's first chunk or its end, so headers can name the provider."""
    if flight.chunks or flight.outcome is not None:
        return True
    guard = DisconnectGuard(request.receive, lambda: guard.cancel_task())
    async with guard:
        await flight.wait_started()
    if guard.gone:
        flight.leave()
        return False
    return True
