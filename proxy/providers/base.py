"""The Provider interface: what every upstream type implements.

Requests and answers cross this seam in OpenAI's chat format. A provider
translates at its edge and nowhere else; the pipeline (routing, retries,
cache, dedup, accounting) never knows which wire format was spoken.
"""

from __future__ import annotations

import abc
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import orjson

from proxy.completions import Chunk, Completion
from proxy.config import ProviderConfig
from proxy.errors import SHAPE_ERRORS, InvalidRequest, SluiceError, UpstreamProtocolError, UpstreamHTTPError
from proxy.http import UpstreamClient, UpstreamResponse
from proxy.sse import KEPT_COMMENTS, Comment


@dataclass(slots=True)
class Call:
    """One request to one target, in OpenAI's format.

    ``body`` is the client's request (after compression) with ``model`` still
    as the client sent it; ``model`` is the upstream model to ask. ``raw`` is
    the client's exact bytes while ``body`` is unchanged from them, so an
    OpenAI upstream can receive them untouched.
    """

    model: str
    body: dict[str, Any]
    raw: bytes | None = None
    authorization: str | None = None
    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # client headers this upstream type takes as sent (anthropic-beta, openai-beta…)

    @property
    def client_model(self) -> str:
        """The model the client asked for: what a translated answer names, so an SDK sees its own model back."""
        return str(self.body.get("model") or self.model)


class ChunkStream:
    """An opened upstream stream: iterate for chunks (in batches, as they were read) and the
    upstream's ``Comment``s in their places, ``aclose`` to release it.

    Returned only after the upstream answered with success headers, so
    retries happen before any byte reaches the client.
    """

    def __init__(self, response: UpstreamResponse, chunks: AsyncIterator[list[Chunk] | Comment]) -> None:
        self._response = response
        self._chunks = chunks
        self.upstream_headers: dict[str, str] | None = None  # for the client, as ``Completion.upstream_headers``
        self.head: list[list[Chunk] | Comment] = []  # what ``start`` read: it comes before the iteration

    async def start(self) -> None:
        """Read up to the first batch of chunks, into ``head``, with the comments before it (the latest few).

        A stream that fails before its first chunk has committed nothing, not
        even with comments on the way: called inside the attempt, this makes
        it a failed attempt that is retried or falls back, as an error status
        is, and its comments go with it.
        """
        comments: deque[Comment] | None = None  # made only when one comes
        async for batch in self._chunks:
            if type(batch) is not Comment:
                self.head = [*comments, batch] if comments else [batch]
                return
            if comments is None:
                comments = deque(maxlen=KEPT_COMMENTS)
            comments.append(batch)
        self.head = [*comments] if comments else []

    def __aiter__(self) -> AsyncIterator[list[Chunk] | Comment]:
        return self._chunks

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        finally:
            self._response.close()


T = TypeVar("T")
_UNSAFE_IN_PATH = re.compile(r"\.\.|[?#\x00-\x1f\x7f]")


def parse_json(body: bytes) -> dict[str, Any]:
    """An upstream JSON object; anything else is a broken answer (a failed attempt, 502), never a 500."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("upstream sent a body that is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamProtocolError("upstream sent JSON that is not an object")
    return data


def from_client(translate: Callable[..., T], *args: Any) -> T:
    """``translate(*args)`` over the client's body: a field of the wrong shape is the client's 400, never a 500."""
    try:
        return translate(*args)
    except SHAPE_ERRORS as exc:
        raise InvalidRequest(f"The request has a field of the wrong type or shape ({type(exc).__name__}: {exc}).") from None


def from_upstream(translate: Callable[..., T], *args: Any) -> T:
    """``translate(*args)`` over the upstream's answer: an unexpected shape is a failed attempt (502), never a 500."""
    try:
        return translate(*args)
    except SHAPE_ERRORS as exc:
        raise UpstreamProtocolError(f"upstream sent an answer of an unexpected shape ({type(exc).__name__})") from None


def path_model(model: str) -> str:
    """``model``, checked before it becomes part of a URL path: no ``..``, ``?``, ``#`` or control
    characters, which would point the request elsewhere on the upstream (a 400 naming ``model``)."""
    if _UNSAFE_IN_PATH.search(model):
        raise InvalidRequest(f"The model id {model!r} cannot be used: it contains '..', '?', '#' or a control character.", param="model")
    return model


async def translated(
    batches: AsyncIterator[list[bytes] | Comment], translate: Callable[[bytes], Iterable[Chunk]]
) -> AsyncIterator[list[Chunk] | Comment]:
    """Each batch of upstream events as a batch of ``chat.completion.chunk``s; comments as they came.

    When an event in a batch fails (an error mid-stream, broken JSON, an
    event of an unexpected shape), the chunks before it still go out first,
    as they would had they arrived in reads of their own.
    """
    async for batch in batches:
        if type(batch) is Comment:
            yield batch
            continue
        chunks: list[Chunk] = []
        try:
            for item in batch:
                chunks.extend(from_upstream(translate, item))
        except SluiceError:
            if chunks:
                yield chunks
            raise
        if chunks:
            yield chunks


class StreamTranslation(Protocol):
    """One upstream stream's translation state: parsed events in, ``chat.completion.chunk`` dicts out."""

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]: ...

    def close(self) -> list[dict[str, Any]]:
        """The chunks that follow the upstream's last event (usage); raises if the stream ended early."""
        ...


async def translated_stream(
    batches: AsyncIterator[list[bytes] | Comment], stream: StreamTranslation
) -> AsyncIterator[list[Chunk] | Comment]:
    """An upstream stream of JSON events (SSE data or NDJSON lines; blank ones carry none) as hub chunks."""

    def feed(data: bytes) -> list[Chunk]:
        return [Chunk.from_data(chunk) for chunk in stream.feed(parse_json(data))] if data.strip() else []

    async for chunks in translated(batches, feed):
        yield chunks
    last = [Chunk.from_data(chunk) for chunk in from_upstream(stream.close)]
    if last:
        yield last


class Provider(abc.ABC):
    """One configured upstream (a ``providers[]`` entry) with its pooled client."""

    def __init__(self, config: ProviderConfig, client: UpstreamClient) -> None:
        self.config = config
        self.name = config.name
        self.client = client

    @abc.abstractmethod
    async def chat(self, call: Call) -> Completion:
        """A non-streamed chat completion, translated to ``chat.completion``."""

    @abc.abstractmethod
    async def chat_stream(self, call: Call) -> ChunkStream:
        """Open a streamed chat completion; its chunks are ``chat.completion.chunk``.

        The stream must end with a usage-only chunk whenever the upstream
        reports usage, whatever the client asked for: the pipeline strips it
        for clients that did not ask.
        """

    @abc.abstractmethod
    async def embed(self, call: Call) -> Completion:
        """Embeddings, translated to OpenAI's ``list`` of ``embedding`` objects."""

    @abc.abstractmethod
    async def list_models(self, authorization: str | None) -> list[str]:
        """The upstream's model ids, without the provider prefix."""

    def speaks(self, api: str) -> bool:
        """Whether this upstream serves the client API ``api`` (a surface's ``api``) itself."""
        return False

    async def native(self, api: str, call: Call) -> Completion:
        """``call.body`` in the API's own format, sent as is (model rewritten); the answer as the upstream sent it."""
        raise NotImplementedError(api)

    async def native_stream(self, api: str, call: Call) -> ChunkStream:
        """The streamed form of ``native``: each chunk one upstream event, ``Chunk.frame`` its SSE bytes."""
        raise NotImplementedError(api)

    async def forward(self, method: str, path: str, call: Call) -> tuple[int, bytes]:
        """Another route of a native API (``GET responses/{id}``, ``POST messages/count_tokens``…),
        relative to ``base_url``: status and body as the upstream answered."""
        raise NotImplementedError(path)

    def credential(self, call_authorization: str | None) -> str | None:
        """The secret to send upstream: the configured ``api_key``; else, only with
        ``pass_client_key``, the caller's own (the bare token of ``Bearer …`` or
        ``x-api-key``); else none. The one place that decides (CONTRACT §6 "Credentials")."""
        if self.config.api_key:
            return self.config.api_key
        if self.config.pass_client_key and call_authorization:
            return bearer_token(call_authorization)
        return None

    def _headers(self, authorization: str | None) -> dict[str, str]:
        """JSON both ways and the credential as a bearer token; a provider type changes what it must."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        secret = self.credential(authorization)
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    async def _send(self, method: str, url: str, authorization: str | None, wire: Any = None) -> UpstreamResponse:
        """``wire`` as JSON to ``url``, with this provider's headers for ``authorization``."""
        payload = orjson.dumps(wire) if wire is not None else None
        return await self._request(method, url, self._headers(authorization), payload)

    async def _request(self, method: str, url: str, headers: dict[str, str], payload: bytes | None = None) -> UpstreamResponse:
        """The upstream's answer; an error answer raised as ``UpstreamHTTPError``."""
        response = await self.client.request(method, url, headers, payload)
        if response.status >= 400:
            await raise_upstream_error(response)
        return response

    async def aclose(self) -> None:
        await self.client.aclose()


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive), or the value itself."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if token and scheme.lower() == "bearer":
        return token.strip() or None
    return value.strip() or None


def retry_after_seconds(headers: Any) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), if present."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def passed_back(response: UpstreamResponse) -> dict[str, str] | None:
    """The upstream's answer headers a client should see: ``x-request-id`` and ``x-ratelimit-*``.

    Scanned on the raw list, names lower-cased: ~0.4 µs for an answer without
    them (building ``headers`` would cost ~7 µs on every answer).
    """
    found = None
    for name, value in response.raw_headers:
        if name[1:2] == b"-" and name[:1] in b"xX":
            key = name.lower()
            if key == b"x-request-id" or key.startswith(b"x-ratelimit-"):
                if found is None:
                    found = {}
                found[key.decode("latin-1")] = value.decode("latin-1")
    return found


async def raise_upstream_error(response: UpstreamResponse) -> None:
    """Turn an upstream error answer into ``UpstreamHTTPError``, keeping its message.

    Understands OpenAI's ``{"error": {...}}``, Gemini's ``{"error": {"status"...}}``,
    Anthropic's ``{"type": "error", "error": {"type", "message"}}`` and Ollama's
    ``{"error": "text"}`` bodies; anything else is summarised.
    """
    body = await response.read()
    message, code, kind, param = f"upstream answered HTTP {response.status}", None, None, None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, str) else error.get("status") if isinstance(error.get("status"), str) else None
        kind = error.get("type") if isinstance(error.get("type"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    elif isinstance(error, str):
        message = error
    raise UpstreamHTTPError(
        response.status, message, code=code, type=kind, param=param, retry_after=retry_after_seconds(response.headers)
    )
