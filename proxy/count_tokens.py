"""``POST /v1/messages/count_tokens``: how many input tokens a Messages request would use.

The model routes as for ``/v1/messages``, and its targets are tried in order
as chat tries them (breakers, retries, fallback): an anthropic provider
counts itself (the body is forwarded as sent, model rewritten; a client
error it answers passes through); the first target of any other provider
type answers with tiktoken's estimate of the request as the hub would send it
(``MessagesSurface.count_tokens``), with no upstream call. So does a count
whose anthropic targets all failed or have open breakers: an estimate serves
a client better than an error for a number it only plans with. Counting is
free, as it is at Anthropic: the caller's key is checked but no rate or
budget is charged. Errors speak Anthropic's shape.
"""

from __future__ import annotations

from itertools import takewhile

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.config import Target
from proxy.errors import CircuitOpen, SluiceError, UpstreamError, UpstreamFailure, UpstreamHTTPError, UpstreamTimeout
from proxy.pipeline import Pipeline
from proxy.providers.base import Call
from proxy.requests import read_headers, read_json_body
from proxy.resilience import Attempts
from proxy.surfaces.base import require_model
from proxy.surfaces.messages import MessagesSurface
from proxy.tokens import load_encoding

PATH = "/v1/messages/count_tokens"
UPSTREAM_PATH = "messages/count_tokens"
_UNCOUNTED = (UpstreamFailure, UpstreamError, UpstreamTimeout, CircuitOpen)
"""What ``Resilience.run`` raises when no target could count."""


async def count_tokens(pipeline: Pipeline, surface: MessagesSurface, request: Request) -> Response:
    try:
        return await _count(pipeline, surface, request)
    except SluiceError as exc:
        request.scope["state"]["record"].error_code = exc.code
        return surface.error_response(exc)


async def _count(pipeline: Pipeline, surface: MessagesSurface, request: Request) -> Response:
    headers = read_headers(request.scope)
    credential = headers.credential
    pipeline.limiter.authenticate(credential)
    raw, body = await read_json_body(request, headers, pipeline.config.server.max_body_bytes)
    model = require_model(body)
    targets = pipeline.router.resolve(model).targets
    counting = tuple(takewhile(lambda t: pipeline.providers[t.provider].speaks(surface.api), targets))
    # with proxy keys configured, the caller's header holds one of them, never an upstream credential
    passed = credential if not pipeline.config.auth.keys else None
    request_id = request.scope["state"]["record"].request_id

    async def count_at(target: Target) -> Response:
        call = Call(target.model, body, raw, passed, request_id, headers.passed or {})
        status, content = await pipeline.providers[target.provider].forward("POST", UPSTREAM_PATH, call)
        if status >= 400:
            failure = UpstreamHTTPError(status, f"count_tokens answered HTTP {status}")
            if status >= 500 or pipeline.resilience.retryable(failure):
                raise failure  # retried, then the next target, then the estimate
        return Response(content, status_code=status, media_type="application/json")

    if counting:
        try:
            return (await pipeline.resilience.run(counting, count_at, Attempts())).value
        except _UNCOUNTED:
            pass
    await load_encoding(model)  # building an encoder on first use must not stall the event loop
    return Response(orjson.dumps({"input_tokens": surface.count_tokens(body)}), media_type="application/json")
