"""OpenAI and OpenAI-compatible upstreams: a passthrough, bytes in and bytes out.

The client's body goes upstream as sent (only ``model`` is rewritten when
routing changed it, and streams ask for usage); answers come back unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from proxy.completions import Chunk, Completion
from proxy.config import ProviderConfig
from proxy.errors import UpstreamConnectionError
from proxy.http import UpstreamClient, UpstreamResponse
from proxy.providers.base import Call, ChunkStream, Provider, from_upstream, raise_upstream_error, translated


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(config, client)
        self._chat_url = f"{config.base_url}/chat/completions"
        self._embeddings_url = f"{config.base_url}/embeddings"
        self._models_url = f"{config.base_url}/models"

    def _headers(self, authorization: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        secret = self.credential(authorization)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    @staticmethod
    def _payload(call: Call, stream: bool = False) -> bytes:
        """The client's bytes when nothing must change, else the body re-encoded."""
        changes: dict[str, Any] = {}
        if call.body.get("model") != call.model:
            changes["model"] = call.model
        if stream:
            if call.body.get("stream") is not True:
                changes["stream"] = True
            options = call.body.get("stream_options") or {}
            if not options.get("include_usage"):
                changes["stream_options"] = {**options, "include_usage": True}
        if not changes and call.raw is not None:
            return call.raw
        return orjson.dumps({**call.body, **changes})

    async def _post(self, url: str, call: Call, payload: bytes) -> UpstreamResponse:
        response = await self.client.request("POST", url, self._headers(call.authorization), payload)
        if response.status >= 400:
            await raise_upstream_error(response)
        return response

    async def chat(self, call: Call) -> Completion:
        response = await self._post(self._chat_url, call, self._payload(call))
        return _completion(await response.read())

    async def chat_stream(self, call: Call) -> ChunkStream:
        response = await self._post(self._chat_url, call, self._payload(call, stream=True))
        return ChunkStream(response, _chunks(response))

    async def embed(self, call: Call) -> Completion:
        response = await self._post(self._embeddings_url, call, self._payload(call))
        return _completion(await response.read())

    async def list_models(self, authorization: str | None) -> list[str]:
        response = await self.client.request("GET", self._models_url, self._headers(authorization))
        if response.status >= 400:
            await raise_upstream_error(response)
        return from_upstream(_model_ids, _parse(await response.read()))


def _model_ids(data: dict[str, Any]) -> list[str]:
    return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _parse(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamConnectionError("upstream sent a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamConnectionError("upstream sent JSON that is not an object")
    return data


def _completion(body: bytes) -> Completion:
    return Completion(body, _parse(body))


async def _chunks(response: UpstreamResponse) -> AsyncIterator[list[Chunk]]:
    done = False

    def chunk(data: bytes) -> list[Chunk]:
        nonlocal done
        if done or data == b"[DONE]":
            done = True
            return []
        parsed = _parse(data)
        if "error" in parsed and "choices" not in parsed:
            error = parsed["error"] if isinstance(parsed["error"], dict) else {"message": str(parsed["error"])}
            raise UpstreamConnectionError(f"upstream stream failed: {error.get('message', 'unknown error')}")
        return [Chunk(data, parsed)]

    async for chunks in translated(response.sse_batches(), chunk):
        yield chunks
        if done:
            return
    if not done:
        raise UpstreamConnectionError("upstream stream ended before [DONE]")
