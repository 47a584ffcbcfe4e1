"""The request path (ARCHITECTURE.md), nothing else, for every client API.

parse → authenticate and limit → route → cache lookup → join or lead a flight
→ (in the flight: compress, then for each target, breaker and retries around
the provider call) → store, account → answer as JSON or SSE.

A surface (``proxy/surfaces/``) parses its client API and renders answers
back; a target whose provider speaks the surface's API itself gets the
client's body natively, any other the hub request (Chat Completions) that
the surface made of it. So an answer is in the hub's form or in the
surface's own, and is rendered from either (``_is_native``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response

from proxy.accounting import NO_COST, Prices, Usage
from proxy.cache.base import CacheBackend, CachedAnswer, CacheUnavailable
from proxy.cache.keys import cache_key, identity_of
from proxy.cache.semantic import SemanticCache, SemanticQuery
from proxy.completions import Chunk, Completion, StreamAssembler, replay_chunks
from proxy.compression import DEFAULT_OUTPUT_RESERVE, compress
from proxy.config import Config, Target
from proxy.dedup import Flight, FlightRegistry, Outcome
from proxy.disconnect import DisconnectGuard
from proxy.errors import SluiceError
from proxy.hit_lane import HitLane
from proxy.limits import Limiter, Principal, has_limits
from proxy.providers.base import Call, ChunkStream, Provider
from proxy.requests import RequestOptions, read_headers, read_json_body, request_options
from proxy.resilience import Resilience
from proxy.responses import Answer, EventStream, JSONAnswer
from proxy.routing import Route, Router
from proxy.sse import Comment
from proxy.surfaces.base import ParsedRequest, Surface
from proxy.telemetry import Telemetry
from proxy.telemetry.record import RequestRecord
from proxy.tokens import context_window, count_messages, count_text, load_encoding

if TYPE_CHECKING:
    from proxy.remote_flights import RemoteFlights

Runner = Callable[[Flight], Awaitable[None]]
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients skip it, idle timeouts of proxies on the way reset
_log = structlog.get_logger("sluice")


@dataclass(slots=True)
class Job:
    """One upstream job that a flight runs: what to send and where.

    ``body``/``raw`` are the client's request in its own API, for targets
    that speak it; ``hub``/``hub_raw`` the same request as Chat Completions
    (``hub_raw`` only while those are the client's exact bytes) for the
    others, None when every target speaks the surface's API. ``bridged``:
    every target gets the hub request (a conversation that Sluice keeps).
    """

    surface: Surface
    body: dict[str, Any]
    raw: bytes
    hub: dict[str, Any] | None
    hub_raw: bytes | None
    route: Route
    options: RequestOptions
    authorization: str | None
    identity: str
    headers: dict[str, str]
    request_id: str
    cache_key: str | None
    bridged: bool = False
    semantic: SemanticQuery | None = None  # set when the semantic cache may store this job's answer
    rendered: dict[str, Any] | None = None  # the hub answer in the surface's form, once ``_remember`` made it

    def native_to(self, provider: Provider) -> bool:
        """Whether ``provider`` gets the client's own body rather than the hub request."""
        return not self.bridged and provider.speaks(self.surface.api)


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
        self.remote_flights: RemoteFlights | None = None  # set by Gateway with the Redis backend and dedup on
        self.lane: HitLane | None = None  # set by Gateway when cache.hit_lane is on
        self.semantic: SemanticCache | None = None  # set by Gateway when cache.semantic.mode is not off
        self._dedup = config.dedup.enabled
        self._pass_credentials = not config.auth.keys  # with proxy keys, the caller's header holds one of them
        self._windows: dict[str, int | None] = {}

    async def serve(self, request: Request, surface: Surface) -> Answer:
        record: RequestRecord = request.scope["state"]["record"]
        record.tracked = True
        headers = read_headers(request.scope)
        credential = headers.credential
        principal = self.limiter.authenticate(credential)
        record.key_name = principal.name
        raw, body = await read_json_body(request, headers, self.config.server.max_body_bytes)
        record.bytes_in = len(raw)
        parsed = surface.parse(body)
        record.model, record.stream, record.body = parsed.model, parsed.stream, body
        self.limiter.check_model(principal, parsed.model)
        options = request_options(headers, self.config.compression.mode)
        route = self.router.resolve(parsed.model)
        await self.limiter.admit(principal)
        identity = identity_of(credential, principal.name)
        hub, hub_raw, bridged = await self._hub_request(surface, body, raw, route, identity)
        key = None
        if self.cache is not None or self._dedup:
            key = cache_key(surface.api, route.key, surface.keyed(body), identity, options.compression)
        job = Job(
            surface,
            body,
            raw,
            hub,
            hub_raw,
            route,
            options,
            credential if self._pass_credentials else None,
            identity,
            headers.passed or {},
            record.request_id,
            key,
            bridged,
        )

        answer = await self._lookup(job, record)
        if answer is None and self.semantic is not None and record.cache == "miss":
            answer = await self._similar(self.semantic, job, record, principal)
        if answer is not None:
            response, payload = self._cached_response(answer, job, parsed, record)
            lane_allowed = record.cache == "hit" and surface.hit_lane and (principal.key is None or not has_limits(principal.key))
            if self.lane is not None and lane_allowed:
                # a key with limits must be counted, and may be refused, on every request
                self.lane.learn(request.scope, raw, job.cache_key, answer, response.raw_headers, payload, parsed.stream, record)  # type: ignore[arg-type]
            return response

        flight, run = self._flight_for(job, parsed.stream, record)
        if parsed.stream:
            if run is not None:
                flight.start(run)
            return await self._stream_response(request, flight, job, parsed, record, principal)
        return await self._json_response(request, flight, run, job, record, principal)

    async def _hub_request(
        self, surface: Surface, body: dict[str, Any], raw: bytes, route: Route, identity: str
    ) -> tuple[dict[str, Any] | None, bytes | None, bool]:
        """The request as Chat Completions, made once, before any upstream call, so that
        what cannot be carried is a 400 up front rather than a failed fallback; and
        whether every target must get it (a conversation Sluice keeps continues bridged)."""
        if surface.hub_native:
            return body, raw, False
        # a conversation Sluice keeps (or another caller's: 404) decides before the targets do
        history = await surface.history(body, identity) if surface.remembers else None
        if history is None and all(self.providers[t.provider].speaks(surface.api) for t in route.targets):
            return None, None, False
        return surface.to_hub(body, history), None, history is not None

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
        if answer is not None and job.surface.remembers:
            answer = await self._reissued(job, answer)
        record.cache = "hit" if answer is not None else "miss"
        return answer

    async def _similar(
        self, semantic: SemanticCache, job: Job, record: RequestRecord, principal: Principal
    ) -> CachedAnswer | None:
        """After an exact miss, a similar earlier request's answer (the semantic cache), when the
        request is in; ``job.semantic`` is set when its own answer may be stored for later ones."""
        switch = principal.key.semantic if principal.key is not None else None
        if not semantic.wanted(job.options, switch):
            return None
        parts = job.surface.semantic_parts(job.surface.keyed(job.body))  # as the exact key sees it
        if parts is None:
            return None
        job.semantic, hit = await semantic.lookup(job.route.key, job.surface.api, parts, job.identity, job.options.compression)
        if hit is None:
            return None
        answer: CachedAnswer | None = hit.answer
        if job.surface.remembers:  # a Responses answer: a new one of this request's own, as an exact hit's
            answer = await self._reissued(job, hit.answer)
        if answer is not None:
            record.cache, record.similarity = "semantic", hit.similarity
        return answer

    async def _reissued(self, job: Job, cached: CachedAnswer) -> CachedAnswer | None:
        """A hit on an API that keeps its answers (Responses) as an answer of its own, kept like one
        (a bridged answer gets fresh ids, so GET, DELETE and ``previous_response_id`` work on it);
        None, a miss, when the native answer names a response that is gone."""
        surface = job.surface
        data = cached.completion.data
        if _is_native(surface, data):
            return cached if await surface.still_kept(data, job.body) else None
        completion = Completion.from_data(surface.reissued(data))
        await self._remember(job, completion, cached.provider)
        return CachedAnswer(completion, cached.provider)

    async def _store(self, job: Job, completion: Completion, provider: str) -> None:
        if self.cache is None or job.options.no_store or job.cache_key is None:
            return
        ttl = job.options.ttl if job.options.ttl is not None else self.config.cache.ttl_seconds
        if ttl <= 0:
            return
        try:
            await self.cache.set(job.cache_key, CachedAnswer(completion, provider), ttl)
        except CacheUnavailable:
            return
        if job.semantic is not None and self.semantic is not None:
            await self.semantic.store(job.semantic, job.cache_key)

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
        remote = self.remote_flights if registered else None
        if remote is not None:
            try:
                shared = await remote.settle(flight, job.cache_key, lambda completion: _replayed(job, completion))  # type: ignore[arg-type]
            except BaseException:
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
                raise
            if shared:  # answered by an identical call in another process
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
                return
        attempts = flight.attempts
        started = time.perf_counter()
        try:
            if job.hub is not None and job.surface.api != "embeddings":
                for target in job.route.targets:  # compression, trimming and answers without usage count tokens
                    await load_encoding(target.model)
                await load_encoding(job.body["model"])  # a surface's own estimates (Messages' message_start) count by the client's name
            if flight.streaming:
                result = await self.resilience.run(
                    job.route.targets, lambda target: self._open_stream(flight, job, target), attempts
                )
                flight.target = result.target
                completion = await self._pump(flight, job, result.value, started)
            else:
                result = await self.resilience.run(
                    job.route.targets, lambda target: self._call(flight, job, target), attempts
                )
                flight.target = result.target
                completion = result.value
            outcome = Outcome(completion=completion, usage=_usage_of(job, completion), target=result.target)
        except SluiceError as exc:
            outcome = Outcome(error=exc, target=attempts.target)
        finally:
            if registered:
                self.flights.discard(job.cache_key, flight)  # type: ignore[arg-type]
        outcome.attempts, outcome.retries, outcome.fallbacks = attempts.count, attempts.retries, attempts.fallbacks
        outcome.upstream_seconds = time.perf_counter() - started
        outcome.first_chunk_seconds = flight.first_chunk_seconds
        outcome.tokens_saved, outcome.trimmed_messages = flight.tokens_saved, flight.trimmed_messages
        if outcome.completion is not None and outcome.target is not None and job.surface.remembers:
            await self._remember(job, outcome.completion, outcome.target.provider)
        flight.finish(outcome)
        if outcome.completion is not None and outcome.target is not None:
            await self._store(job, outcome.completion, outcome.target.provider)

    async def _remember(self, job: Job, completion: Completion, provider: str) -> None:
        """Let the surface keep the answer (Responses' stored responses) before any caller sees its end."""
        native = _is_native(job.surface, completion.data)
        answer = completion.data if native else job.surface.from_hub(completion.data, job.body)
        if not native:
            job.rendered = answer
        try:
            await job.surface.answered(job.body, job.identity, answer, native, provider)
        except Exception as exc:  # noqa: BLE001 - the answer stands even when it cannot be kept
            _log.warning("answer_not_kept", api=job.surface.api, error=f"{type(exc).__name__}: {exc}")

    def _native_call(self, job: Job, target: Target) -> Call:
        return Call(target.model, job.body, job.raw, job.authorization, job.request_id, job.headers)

    def _hub_call(self, flight: Flight, job: Job, target: Target) -> Call:
        body, raw, flight.tokens_saved, flight.trimmed_messages = self._compressed(job, target)
        return Call(target.model, body, raw, job.authorization, job.request_id, job.headers)

    def _context_window(self, model: str) -> int | None:
        if model not in self._windows:
            if len(self._windows) >= 10_000:  # the model is the client's string: keep the memo bounded
                return context_window(model, self.config.context_windows)
            self._windows[model] = context_window(model, self.config.context_windows)
        return self._windows[model]

    def _compressed(self, job: Job, target: Target) -> tuple[dict[str, Any], bytes | None, int, int]:
        hub = job.hub
        assert hub is not None
        if job.surface.api == "embeddings":
            return hub, job.hub_raw, 0, 0
        window = self._context_window(target.model) if self.config.compression.trim_history else None
        if job.options.compression == "off" and (window is None or _surely_fits(hub, job.hub_raw, window)):
            return hub, job.hub_raw, 0, 0
        result = compress(
            hub["messages"],
            job.options.compression,
            model=target.model,
            context_window=window,
            max_output_tokens=_max_output_tokens(hub),
            trim=self.config.compression.trim_history,
        )
        if not result.changed:
            return hub, job.hub_raw, 0, 0
        return {**hub, "messages": result.messages}, None, result.tokens_saved, result.trimmed_messages

    async def _call(self, flight: Flight, job: Job, target: Target) -> Completion:
        provider = self.providers[target.provider]
        api = job.surface.api
        if job.native_to(provider):
            return await provider.native(api, self._native_call(job, target))
        call = self._hub_call(flight, job, target)
        if api == "embeddings":
            return await provider.embed(call)
        return await provider.chat(call)

    async def _open_stream(self, flight: Flight, job: Job, target: Target) -> ChunkStream:
        provider = self.providers[target.provider]
        api = job.surface.api
        if job.native_to(provider):
            stream = await provider.native_stream(api, self._native_call(job, target))
            flight.native = True
        else:
            stream = await provider.chat_stream(self._hub_call(flight, job, target))
            flight.native = False
        try:
            await stream.start()  # up to the first chunk: a stream that fails before it is retried
        except BaseException:
            await stream.aclose()
            raise
        flight.upstream_headers = stream.upstream_headers
        return stream

    async def _pump(self, flight: Flight, job: Job, stream: ChunkStream, started: float) -> Completion:
        """Forward each chunk to the flight as it arrives; assemble the whole for the cache.

        Upstream comments go to the flight's followers, never into the answer.
        """
        assembler = job.surface.assembler() if flight.native else StreamAssembler()

        def take(batch: list[Chunk] | Comment) -> None:
            """One batch of what ``start`` read: comments, then the stream's first chunks."""
            if type(batch) is Comment:
                flight.comment(batch)
                return
            flight.first_chunk_seconds = time.perf_counter() - started
            for chunk in batch:
                assembler.add(chunk.data)
            flight.publish(batch)

        try:
            for batch in stream.head:
                take(batch)
            async for batch in stream:  # as ``take``, inline: every event goes through this loop
                if type(batch) is Comment:
                    flight.comment(batch)
                    continue
                for chunk in batch:
                    assembler.add(chunk.data)
                flight.publish(batch)
        finally:
            await stream.aclose()
        if not assembler.finished:
            raise SluiceError("upstream stream ended without a finish reason", status=502, code="upstream_error")
        if isinstance(assembler, StreamAssembler):
            return assembler.completion()
        return Completion.from_data(assembler.result())

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
        if record.similarity is not None:
            headers["X-Sluice-Similarity"] = f"{record.similarity:.4f}"
        headers.update(self.limiter.rate_headers(record.key_name))
        if record.upstream_headers:  # a key's own limits, and Sluice's request id, win
            for name, value in record.upstream_headers.items():
                headers.setdefault("x-upstream-request-id" if name == "x-request-id" else name, value)
        return headers

    def _cached_response(
        self, answer: CachedAnswer, job: Job, parsed: ParsedRequest, record: RequestRecord
    ) -> tuple[JSONAnswer | EventStream, bytes]:
        """The answer for a cache hit, and its body (a whole SSE stream for a streaming client)."""
        completion = answer.completion
        record.provider, record.completion = answer.provider, completion
        usage = _hub_usage(job.surface, completion)
        if usage:
            targets = job.route.targets
            model = next((t.model for t in targets if t.provider == answer.provider), targets[0].model)
            tokens = Usage.of(usage)
            record.tokens_saved_cache = tokens.prompt + tokens.completion
            record.cost_saved_usd = self.prices.costs(answer.provider, model, tokens).spent
        headers = self._headers(record)
        if not parsed.stream:
            body = _json_body(job, completion)
            return JSONAnswer(body, headers), body
        payload = _replay(job, completion, parsed.include_usage)
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
        record.upstream_headers = completion.upstream_headers
        record.completion = completion
        usage = outcome.usage
        record.tokens_saved, record.trimmed_messages = outcome.tokens_saved, outcome.trimmed_messages
        tokens = Usage.of(usage) if usage else None  # read once, for the costs and the record
        costs = self.prices.costs(target.provider, target.model, tokens) if tokens is not None else NO_COST
        cost = costs.spent
        if record.dedup:
            record.cost_saved_usd = cost
            return
        if tokens is not None:
            record.prompt_tokens, record.completion_tokens = tokens.prompt, tokens.completion
            record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens = tokens.cached, tokens.cache_write, tokens.reasoning
        record.cost_usd = cost
        record.cost_saved_provider_cache_usd = costs.saved_by_provider_cache
        record.cost_saved_usd = self.prices.input_cost(target.provider, target.model, record.tokens_saved)
        self.limiter.charge(principal, record.prompt_tokens + record.completion_tokens, cost)

    async def _json_response(
        self, request: Request, flight: Flight, run: Runner | None, job: Job, record: RequestRecord, principal: Principal
    ) -> Answer:
        outcome = await _outcome(request, flight, run)
        if outcome is None:
            return _disconnected(record)
        self._account(outcome, record, principal)
        if outcome.error is not None:
            record.error_code = outcome.error.code
            return job.surface.error_response(outcome.error, self._headers(record))
        completion = outcome.completion
        assert completion is not None
        return JSONAnswer(_json_body(job, completion), self._headers(record))

    async def _stream_response(
        self, request: Request, flight: Flight, job: Job, parsed: ParsedRequest, record: RequestRecord, principal: Principal
    ) -> Answer:
        if not flight.streaming:  # joined a JSON flight: its answer, replayed
            outcome = await _outcome(request, flight, None)
            if outcome is None:
                return _disconnected(record)
            self._account(outcome, record, principal)
            if outcome.error is not None:
                record.error_code = outcome.error.code
                return job.surface.error_response(outcome.error, self._headers(record))
            assert outcome.completion is not None
            payload = _replay(job, outcome.completion, parsed.include_usage)
            return EventStream(_once(payload), self._headers(record))
        started = await _wait_started(request, flight, self.config.server.stream_keepalive_seconds or None)
        if started is None:
            return _disconnected(record)
        if started and not flight.chunks and flight.outcome is not None and flight.outcome.error is not None:
            flight.leave()
            self._account(flight.outcome, record, principal)
            record.error_code = flight.outcome.error.code
            return job.surface.error_response(flight.outcome.error, self._headers(record))
        if flight.target is not None:
            record.provider = flight.target.provider
        record.upstream_headers = flight.upstream_headers
        record.dedup = record.dedup or flight.remote
        if not record.dedup:  # what the headers say now; the log line gets the final figures
            record.attempts, record.tokens_saved = max(1, flight.attempts.count), flight.tokens_saved
            record.trimmed_messages = flight.trimmed_messages
        # A slow first event: answer now, and keep the connection alive until it comes.
        keepalive = 0.0 if started else self.config.server.stream_keepalive_seconds
        events = self._follow(flight, job, parsed.include_usage, record, principal, keepalive)
        return EventStream(events, self._headers(record))

    async def _follow(
        self, flight: Flight, job: Job, include_usage: bool, record: RequestRecord, principal: Principal, keepalive: float = 0
    ) -> AsyncGenerator[bytes, None]:
        try:
            if keepalive:  # retries and fallback go on behind the comments
                yield KEEPALIVE
                while not flight.chunks and flight.outcome is None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(keepalive):
                            await flight.wait_started()
                    if not flight.chunks and flight.outcome is None:
                        yield KEEPALIVE
            renderer = None if flight.native else job.surface.renderer(job.body, include_usage)
            async for batch in flight.follow():
                if type(batch) is Comment:  # valid between the events of every client API; clients skip it
                    yield batch
                    continue
                payload = b"".join([c.sse for c in batch]) if renderer is None else renderer.feed(batch)
                if payload:
                    yield payload
            outcome = flight.outcome
            assert outcome is not None
            self._account(outcome, record, principal)
            if outcome.error is not None:
                record.error_code = outcome.error.code
                yield job.surface.error_event(outcome.error) if renderer is None else renderer.fail(outcome.error)
            else:
                end = job.surface.stream_end if renderer is None else renderer.close()
                if end:
                    yield end
        finally:
            flight.leave()


def _is_native(surface: Surface, answer: dict[str, Any]) -> bool:
    """Whether an answer is in the surface's own form rather than the hub's."""
    return not surface.hub_native and answer.get("object") != "chat.completion"


def _json_body(job: Job, completion: Completion) -> bytes:
    surface = job.surface
    if surface.hub_native or _is_native(surface, completion.data):
        return completion.body
    return orjson.dumps(job.rendered if job.rendered is not None else surface.from_hub(completion.data, job.body))


def _replay(job: Job, completion: Completion, include_usage: bool) -> bytes:
    """A whole answer as the stream a live one would have been."""
    surface = job.surface
    if _is_native(surface, completion.data):
        return surface.replay(completion.data, job.body)
    renderer = surface.renderer(job.body, include_usage)
    return renderer.feed(replay_chunks(completion.data, True)) + renderer.close()


def _replayed(job: Job, completion: Completion) -> tuple[bool, list[Chunk]]:
    """``_replay`` as a flight's chunks, for a flight that a leader elsewhere answered as JSON
    (``RemoteFlights``): whether they are native events, and the chunks. A native replay is one
    frame, without the ``stream_end`` that following a flight adds."""
    surface = job.surface
    if _is_native(surface, completion.data):
        frames = surface.replay(completion.data, job.body).removesuffix(surface.stream_end)
        return True, [Chunk(b"{}", {}, frames)]
    return False, replay_chunks(completion.data, True)


def _hub_usage(surface: Surface, completion: Completion) -> dict[str, Any] | None:
    if _is_native(surface, completion.data):
        return surface.hub_usage(completion.data)
    return completion.usage


def _usage_of(job: Job, completion: Completion) -> dict[str, Any] | None:
    """The upstream's own usage; a tiktoken estimate only when it gave none."""
    usage = _hub_usage(job.surface, completion)
    if usage is not None or job.hub is None or job.surface.api == "embeddings" or _is_native(job.surface, completion.data):
        return usage
    model = job.route.targets[0].model
    prompt = count_messages(job.hub["messages"], model)
    text = completion.text()
    output = count_text(text, model) if text else 0
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output, "estimated": True}


def _surely_fits(body: dict[str, Any], raw: bytes | None, window: int) -> bool:
    """Whether the prompt fits without counting: a text token is at least one byte of
    the JSON body, and the body has no parts counted by a fixed size (images, audio, files)."""
    if raw is None:
        return False
    if b'"image_url"' in raw or b'"input_audio"' in raw or b'"file"' in raw:
        return False
    reserve = _max_output_tokens(body) or min(DEFAULT_OUTPUT_RESERVE, window // 4)
    return len(raw) + reserve <= window


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


async def _once(payload: bytes) -> AsyncGenerator[bytes, None]:
    """A whole stream already at hand: one write."""
    yield payload


def _disconnected(record: RequestRecord) -> Response:
    """The answer for a client that left before it came (499, as nginx logs it)."""
    record.error_code = "client_disconnected"
    return Response(status_code=499)


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


async def _wait_started(request: Request, flight: Flight, timeout: float | None) -> bool | None:
    """Wait for the stream's first chunk or its end, so headers can name the provider:
    True then, False when ``timeout`` passed first, None when the client left."""
    if flight.chunks or flight.outcome is not None:
        return True
    guard = DisconnectGuard(request.receive, lambda: guard.cancel_task())
    timed_out = False
    async with guard:
        try:
            async with asyncio.timeout(timeout):
                await flight.wait_started()
        except TimeoutError:
            timed_out = True
    if guard.gone:
        flight.leave()
        return None
    return not timed_out
