"""The app factory: routes, the lifespan that builds every long-lived part, error handling."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import tracing
from proxy.accounting import Prices
from proxy.cache.base import CacheBackend, CacheUnavailable
from proxy.cache.keys import identity_of
from proxy.cache.memory import MemoryCache
from proxy.cache.redis import RedisCache
from proxy.cache.semantic import build_semantic_cache
from proxy.config import Config, load_config
from proxy.count_tokens import PATH as COUNT_TOKENS_PATH
from proxy.count_tokens import count_tokens
from proxy.errors import InvalidAPIKey, MethodNotAllowed, ModelNotFound, NotFound, SluiceError, UpstreamFailure, error_response
from proxy.hit_lane import HitLane
from proxy.limits import AdminGuard, Limiter
from proxy.middleware import RequestMiddleware
from proxy.pipeline import Pipeline
from proxy.pool_waiting import PoolWaitingCollector, pool_waiting
from proxy.protocol import LANE_STATE, lane_enabled
from proxy.providers import build_provider
from proxy.providers.base import Provider
from proxy.requests import read_headers
from proxy.resilience import Breakers, Resilience
from proxy.responses import Answer
from proxy.routing import Router
from proxy.surfaces.base import Surface
from proxy.surfaces.chat import ChatSurface
from proxy.surfaces.completions import CompletionsSurface
from proxy.surfaces.embeddings import EmbeddingsSurface
from proxy.surfaces.messages import MessagesSurface
from proxy.surfaces.response_routes import ResponseRoutes
from proxy.surfaces.response_store import response_store
from proxy.surfaces.responses import ResponsesSurface
from proxy.telemetry import Telemetry
from proxy.telemetry.logs import configure_logging
from proxy.tokens import use_encodings

if TYPE_CHECKING:
    from proxy.shared_state import SharedState

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_log = structlog.get_logger("sluice")


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def build_cache(config: Config) -> CacheBackend | None:
    if not config.cache.enabled:
        return None
    if config.cache.backend == "redis":
        near = (config.cache.max_entries, config.cache.max_bytes) if config.cache.near_copy else None
        return RedisCache(config.cache.redis_url, near=near)
    return MemoryCache(config.cache.max_entries, config.cache.max_bytes)


class Gateway:
    """Everything that lives as long as the server: built once, shared by all requests."""

    def __init__(self, config: Config, log_format: str = "json") -> None:
        self.config = config
        self.telemetry = Telemetry(log_format, config)
        self.prices = Prices.load(config.pricing_file, config.pricing_file_required)
        self.providers: dict[str, Provider] = {}
        self.cache: CacheBackend | None = None
        self.breakers = Breakers(config.breaker, config.alias_targets())
        self.admin = AdminGuard(config.auth.admin_key)
        self.shared: SharedState | None = None
        self.pipeline: Pipeline | None = None
        self.responses = ResponsesSurface(response_store(config))
        self.surfaces: dict[str, Surface] = {
            s.path: s for s in (ChatSurface(), EmbeddingsSurface(), self.responses, CompletionsSurface(), MessagesSurface())
        }
        self.response_routes: ResponseRoutes | None = None

    async def start(self) -> None:
        use_encodings(self.config.token_encodings)
        tracing.configure(self.config)
        self.providers = {p.name: build_provider(p) for p in self.config.providers}
        self.telemetry.metrics.add_collector(PoolWaitingCollector(self.providers))
        self.response_routes = ResponseRoutes(self.responses.store, self.providers)
        self.cache = build_cache(self.config)
        if self.cache is not None:
            await self.cache.start()
        limiter = Limiter(self.config.auth)
        if self.config.cache.enabled and self.config.cache.backend == "redis":
            from proxy.shared_state import SharedState

            self.shared = SharedState(self.config, self.breakers, self.telemetry.stats.history)
            self.shared.start()
            limiter = self.shared.limiter
        self.pipeline = Pipeline(
            self.config,
            Router(self.config),
            self.providers,
            self.cache,
            Resilience(self.config.retry, self.breakers),
            limiter,
            self.prices,
            self.telemetry,
        )
        tracer = tracing.TRACING
        if self.cache is not None and lane_enabled(self.config) and (tracer is None or not tracer.capture_content):
            lane_paths = frozenset(path.encode() for path, surface in self.surfaces.items() if surface.hit_lane)
            self.pipeline.lane = HitLane(self.cache, self.telemetry, lane_paths)
        if self.cache is not None and self.config.cache.semantic.mode != "off":
            self.pipeline.semantic = build_semantic_cache(self.config, self.cache, self.providers, self.shared)
            await self.pipeline.semantic.start()
        if self.shared is not None and self.config.dedup.enabled:
            from proxy.remote_flights import RemoteFlights

            self.pipeline.remote_flights = RemoteFlights(self.shared.link)

    async def stop(self) -> None:
        self.telemetry.flush()
        tracing.shutdown()
        for provider in self.providers.values():
            await provider.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.pipeline is not None and self.pipeline.remote_flights is not None:
            await self.pipeline.remote_flights.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        await self.responses.store.aclose()

    # -- endpoints other than the two proxied ones --

    def stored_response(self, handler: str):  # type: ignore[no-untyped-def]
        """An endpoint for ``/v1/responses/{response_id}…``: ``ResponseRoutes.<handler>`` for this caller."""

        async def endpoint(request: Request) -> Response:
            assert self.pipeline is not None and self.response_routes is not None
            credential = read_headers(request.scope).credential
            principal = self.pipeline.limiter.authenticate(credential)
            passed = credential if not self.config.auth.keys else None
            return await getattr(self.response_routes, handler)(request, identity_of(credential, principal.name), passed)

        return endpoint

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        providers = {p.name: {"type": p.type} for p in self.config.providers}
        return _json({"status": "ready", "providers": providers, "breakers": self.breakers.states()})

    async def metrics(self, request: Request) -> Response:
        self.telemetry.flush()
        self.telemetry.metrics.breaker_states(self.breakers.states())
        return Response(self.telemetry.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def stats(self, request: Request) -> Response:
        self.admin.check(request.scope)
        entries = 0
        if self.cache is not None:
            with contextlib.suppress(Exception):
                entries = await self.cache.entries()
        self.telemetry.flush()
        snapshot = self.telemetry.stats.snapshot(entries, self.breakers.states())
        if self.pipeline is not None:
            flights = self.pipeline.flights
            snapshot["dedup"].update(in_flight=len(flights), waiting=flights.waiting(), remote_waiting=flights.remote_waiting())
            if self.pipeline.lane is not None:
                snapshot["cache"].update(lane_hits=self.pipeline.lane.hits, lane_entries=len(self.pipeline.lane))
            if self.pipeline.semantic is not None:
                snapshot["cache"]["semantic_entries"] = len(self.pipeline.semantic.index)
        if isinstance(self.cache, RedisCache):
            snapshot["cache"].update(near_entries=len(self.cache.near), near_live=self.cache.near.live)
        if self.pipeline is not None:
            for name, limits in (await self.pipeline.limiter.usage()).items():
                snapshot["keys"].setdefault(name, {}).update(limits)
        snapshot["upstream_pool_waiting"] = pool_waiting(self.providers)
        return _json(snapshot)

    async def stats_history(self, request: Request) -> Response:
        """The dashboard's history: every process's, with the Redis backend."""
        self.admin.check(request.scope)
        self.telemetry.flush()
        others = await self.shared.history.others() if self.shared is not None else []
        return _json(self.telemetry.stats.history.render(others))

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": await self._models(request)})

    async def model(self, request: Request) -> Response:
        """One entry of ``GET /v1/models`` (ids may hold ``/``: ``provider/model``)."""
        model_id = request.path_params["model_id"]
        for entry in await self._models(request):
            if entry["id"] == model_id:
                return _json(entry)
        raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")

    async def _models(self, request: Request) -> list[dict[str, object]]:
        """Aliases, then each provider's models as ``provider/model``; a failing provider is skipped."""
        request.scope["state"]["record"].tracked = False
        data: list[dict[str, object]] = [{"id": alias.name, "object": "model", "created": 0, "owned_by": "sluice"} for alias in self.config.models]
        credential = read_headers(request.scope).credential
        authorization = credential if not self.config.auth.keys else None
        if self.config.auth.keys:
            assert self.pipeline is not None
            self.pipeline.limiter.authenticate(credential)
        for name, provider in self.providers.items():
            try:
                ids = await provider.list_models(authorization)
            except UpstreamFailure as exc:
                _log.warning("models_unavailable", provider=name, error=exc.message)
                continue
            data.extend({"id": f"{name}/{mid}", "object": "model", "created": 0, "owned_by": name} for mid in ids)
        return data

    async def clear_cache(self, request: Request) -> Response:
        self.admin.check(request.scope)
        if self.pipeline is not None and self.pipeline.lane is not None:
            self.pipeline.lane.clear()
        try:
            cleared = await self.cache.clear() if self.cache is not None else 0
        except CacheUnavailable:
            raise SluiceError("The cache backend is unreachable; nothing was cleared.", status=503, code="cache_unavailable", retry_after=1) from None
        return _json({"cleared": cleared})

    async def dashboard(self, request: Request) -> Response:
        name = request.path_params.get("name") or "index.html"
        path = (DASHBOARD_DIR / name).resolve()
        if path.parent != DASHBOARD_DIR.resolve() or not path.is_file():
            raise NotFound(f"No dashboard file '{name}'.")
        if name == "index.html":  # the page holds no data; without the key it is served as a 401 that asks for it
            try:
                self.admin.check(request.scope)
            except InvalidAPIKey:
                return FileResponse(path, status_code=401)
        return FileResponse(path)


def _rendered(request: Request, error: SluiceError) -> Response:
    """An error in the shape of the client API whose path was asked: Anthropic's under
    ``/v1/messages``, OpenAI's everywhere else (CONTRACT §9)."""
    if request.url.path.startswith(MessagesSurface.path):
        return request.app.state.gateway.surfaces[MessagesSurface.path].error_response(error)
    return error_response(error)


async def _sluice_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SluiceError)
    record = request.scope.get("state", {}).get("record")
    if record is not None:
        record.error_code = exc.code
    return _rendered(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _rendered(request, MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}."))
    if exc.status_code == 404:
        return _rendered(request, NotFound(f"No route for {request.method} {request.url.path}."))
    return _rendered(request, SluiceError(str(exc.detail), status=exc.status_code, code="http_error"))


class HotRoutes:
    """``POST`` to a client API's path (a surface) straight to the pipeline.

    Starlette's router and exception layers (matching the routes one by one,
    two more wrappers around every ``send``) measured ~11 µs a request against
    a bare ASGI app: a few percent of a proxied request, more of a cache hit.
    The routes that carry the traffic skip them; everything else, and any
    other method on these paths, goes on to Starlette.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        surface = self.gateway.surfaces.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if surface is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            assert self.gateway.pipeline is not None
            answer: Answer = await self.gateway.pipeline.serve(request, surface)
        except SluiceError as exc:
            request.scope["state"]["record"].error_code = exc.code
            answer = surface.error_response(exc)
        await answer(scope, receive, send)


YOUNG_COLLECTION_THRESHOLD = 10_000
"""Container objects allocated, net, between two collections of the young generation (Python's
default: 700). What lives across requests without being garbage (in-flight requests' state, spans
waiting for export: up to ``OTEL_BSP_MAX_QUEUE_SIZE``) counts towards it; at 700, queued spans alone
set off a collection every few hundred requests, ~9k instructions a traced request (bench/RESULTS.md,
"Tracing cost"; an untraced request's count is unchanged). Reference cycles are freed as before, by
the next collection."""


def create_app(config: Config, log_format: str = "json") -> Starlette:
    configure_logging(log_format)
    gateway = Gateway(config, log_format)

    def surface_endpoint(surface: Surface):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Answer:
            assert gateway.pipeline is not None
            return await gateway.pipeline.serve(request, surface)

        return endpoint

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        await gateway.start()
        # Everything built so far lives as long as the process: keep it out of
        # the collector's way, so collections scan only per-request garbage.
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        try:
            lane = gateway.pipeline.lane if gateway.pipeline is not None else None
            yield {LANE_STATE: lane} if lane is not None else {}
        finally:
            await gateway.stop()

    async def messages_count_tokens(request: Request) -> Response:
        surface = gateway.surfaces[MessagesSurface.path]
        assert gateway.pipeline is not None and isinstance(surface, MessagesSurface)
        return await count_tokens(gateway.pipeline, surface, request)

    routes = [  # the surfaces' are served by HotRoutes; listed so that other methods get a 405
        *(Route(path, surface_endpoint(surface), methods=["POST"]) for path, surface in gateway.surfaces.items()),
        Route(COUNT_TOKENS_PATH, messages_count_tokens, methods=["POST"]),
        Route("/v1/responses/{response_id}", gateway.stored_response("retrieve"), methods=["GET"]),
        Route("/v1/responses/{response_id}", gateway.stored_response("delete"), methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", gateway.stored_response("input_items"), methods=["GET"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", gateway.model, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
        Route("/metrics", gateway.metrics, methods=["GET"]),
        Route("/stats", gateway.stats, methods=["GET"]),
        Route("/stats/history", gateway.stats_history, methods=["GET"]),
        Route("/dashboard", gateway.dashboard, methods=["GET"]),
        Route("/dashboard/{name}", gateway.dashboard, methods=["GET"]),
        Route("/admin/cache/clear", gateway.clear_cache, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={SluiceError: _sluice_error, HTTPException: _http_error},
    )
    app.state.gateway = gateway
    app.add_middleware(HotRoutes, gateway=gateway)
    app.add_middleware(RequestMiddleware, telemetry=gateway.telemetry)  # the outer one: every request has a record
    return app


def app_from_environment() -> Starlette:
    """Factory for uvicorn workers: each worker process loads the same config."""
    import os

    return create_app(load_config(os.environ.get("SLUICE_CONFIG")), os.environ.get("SLUICE_LOG_FORMAT", "json"))
