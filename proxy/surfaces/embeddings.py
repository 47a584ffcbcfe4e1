"""Embeddings (``POST /v1/embeddings``): OpenAI's shape is the hub's; never streamed."""

from __future__ import annotations

from typing import Any

from proxy.errors import InvalidRequest
from proxy.surfaces.base import HubSurface, ParsedRequest, StreamRenderer, require_model, required


class EmbeddingsSurface(HubSurface):
    api = "embeddings"
    path = "/v1/embeddings"

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        model = require_model(body)
        value = required(body, "input")
        if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
            raise InvalidRequest("'input' must be a string or a non-empty array.", param="input")
        return ParsedRequest(model, False)

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        raise AssertionError("embeddings are never streamed")
