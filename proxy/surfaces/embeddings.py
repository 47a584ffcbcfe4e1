"""Embeddings (``POST /v1/embeddings``): OpenAI's shape is the hub's; never streamed."""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest
from proxy.surfaces.base import ParsedRequest, StreamRenderer, Surface, require_model


class EmbeddingsSurface(Surface):
    api = "embeddings"
    path = "/v1/embeddings"
    hub_native = True
    hit_lane = True

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        model = require_model(body)
        value = body.get("input")
        if value is None:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input")
        if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
            raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
        return ParsedRequest(model, False)

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return body

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        raise AssertionError("embeddings are never streamed")
