"""``POST /v1/messages/count_tokens``: how many input tokens a Messages request would use.

The model routes as for ``/v1/messages``; its first target answers. An
anthropic provider counts itself (the body is forwarded as sent, model
rewritten); for any other provider the answer is tiktoken's estimate of the
request as the hub would send it (``MessagesSurface.count_tokens``), with no
upstream call. Counting is free, as it is at Anthropic: the caller's key is
checked but no rate or budget is charged. Errors speak Anthropic's shape.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import SluiceError
from proxy.pipeline import Pipeline
from proxy.providers.base import Call
from proxy.requests import read_headers, read_json_body
from proxy.surfaces.base import require_model
from proxy.surfaces.messages import MessagesSurface
from proxy.tokens import load_encoding

PATH = "/v1/messages/count_tokens"
UPSTREAM_PATH = "messages/count_tokens"


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
    target = pipeline.router.resolve(model).targets[0]
    provider = pipeline.providers[target.provider]
    if provider.speaks(surface.api):
        # with proxy keys configured, the caller's header holds one of them, never an upstream credential
        passed = credential if not pipeline.config.auth.keys else None
        call = Call(target.model, body, raw, passed, request.scope["state"]["record"].request_id, headers.passed or {})
        status, content = await provider.forward("POST", UPSTREAM_PATH, call)
        return Response(content, status_code=status, media_type="application/json")
    await load_encoding(model)  # building an encoder on first use must not stall the event loop
    return Response(orjson.dumps({"input_tokens": surface.count_tokens(body)}), media_type="application/json")
