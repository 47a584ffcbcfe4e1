"""OpenAI and OpenAI-compatible upstreams: a passthrough, bytes in and bytes out.

The client's body goes upstream as sent (only ``model`` is rewritten when
routing changed it, and chat streams ask for usage unless ``stream_usage:
false``); answers come back unchanged. Besides Chat Completions, the upstream
speaks the Responses API (unless ``responses: false``) and legacy completions
natively. The upstream's ``x-request-id`` and ``x-ratelimit-*`` come back on
the answer (``upstream_headers``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from proxy.completions import Chunk, Completion
from proxy.config import ProviderConfig
from proxy.errors import UpstreamProtocolError
from proxy.http import UpstreamClient, UpstreamResponse
from proxy.providers.base import (
    Call,
    ChunkStream,
    Provider,
    from_upstream,
    parse_json,
    passed_back,
    translated,
)
from proxy.sse import Comment


CLIENT_HEADERS = frozenset({"openai-beta"})
"""Client headers (lower case, as ``Call.headers`` keys them) an OpenAI upstream receives as sent."""
ACCOUNT_HEADERS = frozenset({"openai-organization", "openai-project"})
"""Client headers that pick which organization or project a key bills: sent only with the caller's own key,
never with the operator's ``api_key`` (a caller could bill any organization that key can reach)."""


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(config, client)
        self._chat_url = f"{config.base_url}/chat/completions"
        self._embeddings_url = f"{config.base_url}/embeddings"
        self._models_url = f"{config.base_url}/models"
        self._native_urls = {"responses": f"{config.base_url}/responses", "completions": f"{config.base_url}/completions"}

    def _headers(self, authorization: str | None, passed: Mapping[str, str] | None = None) -> dict[str, str]:
        """``passed``: the client's headers; those an OpenAI upstream reads go on as sent."""
        headers = super()._headers(authorization)
        callers_key = "Authorization" in headers and not self.config.api_key
        for name, value in (passed or {}).items():
            if name in CLIENT_HEADERS or (callers_key and name in ACCOUNT_HEADERS):
                headers[name] = value
        return headers

    def speaks(self, api: str) -> bool:
        return api == "completions" or (api == "responses" and self.config.responses)

    @staticmethod
    def _payload(call: Call, stream: bool = False, ask_usage: bool = True) -> bytes:
        """The client's bytes when nothing must change, else the body re-encoded.

        ``ask_usage``: a chat stream asks for its usage chunk (``stream_usage``; without it the
        pipeline estimates usage with tiktoken); native APIs are sent as they came.
        """
        changes: dict[str, Any] = {}
        if call.body.get("model") != call.model:
            changes["model"] = call.model
        if stream:
            if call.body.get("stream") is not True:
                changes["stream"] = True
            options = call.body.get("stream_options") or {}
            if ask_usage and not options.get("include_usage"):
                changes["stream_options"] = {**options, "include_usage": True}
        if not changes and call.raw is not None:
            return call.raw
        return orjson.dumps({**call.body, **changes})

    async def _post(self, url: str, call: Call, payload: bytes) -> UpstreamResponse:
        return await self._request("POST", url, self._headers(call.authorization, call.headers), payload)

    async def chat(self, call: Call) -> Completion:
        response = await self._post(self._chat_url, call, self._payload(call))
        completion = _completion(await response.read())
        completion.upstream_headers = passed_back(response)
        return completion

    async def chat_stream(self, call: Call) -> ChunkStream:
        payload = self._payload(call, stream=True, ask_usage=self.config.stream_usage)
        response = await self._post(self._chat_url, call, payload)
        stream = ChunkStream(response, _chunks(response))
        stream.upstream_headers = passed_back(response)
        return stream

    async def embed(self, call: Call) -> Completion:
        response = await self._post(self._embeddings_url, call, self._payload(call))
        return _completion(await response.read())

    async def native(self, api: str, call: Call) -> Completion:
        response = await self._post(self._native_urls[api], call, self._payload(call, ask_usage=False))
        return _completion(await response.read())

    async def native_stream(self, api: str, call: Call) -> ChunkStream:
        response = await self._post(self._native_urls[api], call, self._payload(call, stream=True, ask_usage=False))
        events = _response_events(response) if api == "responses" else _chunks(response)
        return ChunkStream(response, events)

    async def forward(self, method: str, path: str, call: Call) -> tuple[int, bytes]:
        headers = self._headers(call.authorization, call.headers)
        response = await self.client.request(method, f"{self.config.base_url}/{path}", headers)
        return response.status, await response.read()

    async def list_models(self, authorization: str | None) -> list[str]:
        response = await self._request("GET", self._models_url, self._headers(authorization))
        return from_upstream(_model_ids, parse_json(await response.read()))


def _model_ids(data: dict[str, Any]) -> list[str]:
    return [m["id"] for m in data.get("data") or () if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _completion(body: bytes) -> Completion:
    return Completion(body, parse_json(body))


async def _chunks(response: UpstreamResponse) -> AsyncIterator[list[Chunk] | Comment]:
    done = False

    def chunk(data: bytes) -> list[Chunk]:
        nonlocal done
        if done or data == b"[DONE]":
            done = True
            return []
        parsed = parse_json(data)
        if "error" in parsed and "choices" not in parsed:
            error = parsed["error"] if isinstance(parsed["error"], dict) else {"message": str(parsed["error"])}
            raise UpstreamProtocolError(f"upstream stream failed: {error.get('message', 'unknown error')}")
        return [Chunk(data, parsed)]

    async for chunks in translated(response.sse_batches(), chunk):
        yield chunks
        if done:
            return
    if not done:
        raise UpstreamProtocolError("upstream stream ended before [DONE]")


_RESPONSE_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})


async def _response_events(response: UpstreamResponse) -> AsyncIterator[list[Chunk] | Comment]:
    """A Responses stream's events, each passed on as an ``event: <type>`` frame.

    It must reach one of the final events: a stream cut before them is a
    failed attempt, not an answer.
    """
    done = False

    def event(data: bytes) -> list[Chunk]:
        nonlocal done
        parsed = parse_json(data)
        kind = parsed.get("type")
        if not isinstance(kind, str):
            raise UpstreamProtocolError("upstream sent a Responses event without a type")
        if kind == "error":  # one error path: the pipeline retries it or ends the stream in the client's API
            message = parsed.get("message") or (parsed.get("error") or {}).get("message") or "unknown error"
            raise UpstreamProtocolError(f"upstream stream failed: {message}")
        done = done or kind in _RESPONSE_ENDS
        return [Chunk(data, parsed, frame=b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")]

    async for chunks in translated(response.sse_batches(), event):
        yield chunks
        if done:
            return
    raise UpstreamProtocolError("upstream stream ended before response.completed")
