"""A surface: one client API spoken over the hub (ARCHITECTURE.md, "one hub").

The pipeline speaks one internal shape, OpenAI's Chat Completions (the
"hub"). A surface parses its API's request into that shape and renders the
hub's answers, streams and errors back into its API. When the chosen
provider speaks the surface's API itself (Responses to an OpenAI upstream,
Messages to an Anthropic one), the body goes upstream natively and the
answer comes back in the surface's own form; the surface then only has to
fold native stream events into the whole object (for the cache) and replay
a stored object as a stream.

So an answer is in one of two forms: ``"chat"`` (the hub's), or the
surface's own ``api``. Every surface renders both.

A surface knows nothing of providers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.responses import Response

from proxy.completions import Chunk
from proxy.errors import InvalidRequest, SluiceError, error_event, error_response


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What the pipeline needs to know of a request before routing it."""

    model: str
    stream: bool
    include_usage: bool = False  # chat only: the client asked for the final usage chunk


class StreamRenderer(Protocol):
    """One client's view of a hub stream (``chat.completion.chunk``s), in the surface's API.

    A renderer is stateful and serves exactly one client: a live stream and a
    replayed one (``proxy.completions.replay_chunks``) go through the same
    renderer, so both look the same to the client. The hub stream always ends
    with a usage-only chunk when usage is known.
    """

    def feed(self, chunks: list[Chunk]) -> bytes:
        """The SSE bytes these chunks become (may be empty); read ``chunk.data``."""
        ...

    def close(self) -> bytes:
        """The stream ended well: its closing events."""
        ...

    def fail(self, error: SluiceError) -> bytes:
        """The stream failed after it began: the API's error event(s), last."""
        ...


class NativeAssembler(Protocol):
    """Folds a native stream's events (parsed ``data`` dicts) into the object they add up to."""

    def add(self, event: dict[str, Any]) -> None: ...

    @property
    def finished(self) -> bool:
        """The stream reached its proper end (not cut short)."""
        ...

    def result(self) -> dict[str, Any]:
        """The whole answer, as the non-streamed API would have sent it."""
        ...


class Surface(abc.ABC):
    """One client API. Stateless per request; built once in the gateway's lifespan."""

    api: str  # "chat" | "embeddings" | "responses" | "messages" | "completions": the native form's name
    path: str  # the POST route, e.g. "/v1/responses"
    hub_native: bool = False  # the hub's own API (chat, embeddings): answers need no rendering
    hit_lane: bool = False  # repeated hits may be answered by proxy/hit_lane.py, which serves only these surfaces' paths
    remembers: bool = False  # ``answered`` does something (Responses' stored responses)
    stream_end: bytes = b""  # what follows a native stream's own last event (legacy completions: ``data: [DONE]``)

    @abc.abstractmethod
    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        """Validate what Sluice itself reads; ``InvalidRequest`` naming the field otherwise."""

    def keyed(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body as the cache key sees it: this API's own name for a field the key ignores
        (``proxy.cache.keys.IGNORED_FIELDS``) left out too."""
        return body

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The request as a Chat Completions body, for a provider that does not speak this API.

        ``history`` is hub messages that precede the request's own (``previous_response_id``).
        A parameter that cannot be carried and could change the answer is an ``InvalidRequest`` naming it.
        """
        raise InvalidRequest(f"The {self.api} API is served only by providers that speak it natively.")

    def from_hub(self, completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        """A ``chat.completion`` as this API's answer object. Pure: the same input gives the same ids."""
        return completion

    @abc.abstractmethod
    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        """A fresh renderer of the hub stream for one client."""

    def assembler(self) -> NativeAssembler:
        """Folds this API's own stream events into its answer object."""
        raise NotImplementedError

    def replay(self, answer: dict[str, Any], request: dict[str, Any]) -> bytes:
        """A stored answer in this API's own form as the whole SSE stream a live one would have sent."""
        raise NotImplementedError

    def hub_usage(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        """A native answer's usage in the hub's terms (``prompt_tokens``, ``completion_tokens``,
        ``total_tokens``, ``prompt_tokens_details.cached_tokens``, ...), for accounting."""
        usage = answer.get("usage")
        return usage if isinstance(usage, dict) else None

    def semantic_parts(self, body: dict[str, Any]) -> SemanticParts | None:
        """What the semantic cache compares (the last turn's text) and what must be equal for a hit
        (the rest of the request); None when the request cannot take part: its last turn is not
        the user's text alone, or this API has no turns (embeddings, legacy completions)."""
        return None

    async def history(self, body: dict[str, Any], identity: str) -> list[dict[str, Any]] | None:
        """Hub messages that come before this request's own; None when there are none."""
        return None

    async def answered(self, body: dict[str, Any], identity: str, answer: dict[str, Any], native: bool, provider: str) -> None:
        """Once per upstream answer and per re-issued cache hit (not per joined caller), in this API's form."""
        return None

    def reissued(self, completion: dict[str, Any]) -> dict[str, Any]:
        """A cached hub answer as a new one, for an API that ``remembers`` its answers."""
        return completion

    async def still_kept(self, answer: dict[str, Any], body: dict[str, Any]) -> bool:
        """Whether a cached answer in this API's own form may be handed out again."""
        return True

    def error_response(self, error: SluiceError, headers: dict[str, str] | None = None) -> Response:
        """An error before any byte of the answer was sent, in this API's shape."""
        return error_response(error, headers)

    def error_event(self, error: SluiceError) -> bytes:
        """An error after a stream began, as this API's last SSE event."""
        return error_event(error)


class HubSurface(Surface):
    """One of the hub's own APIs (chat, embeddings): the request is already the hub's and the
    answer needs no rendering, so a repeated hit may be answered by the hit lane."""

    hub_native = True
    hit_lane = True

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return body


SemanticParts = tuple[str, dict[str, Any]]
"""A request's last user turn as text, and the request without that turn (``Surface.semantic_parts``)."""


def last_turn_parts(body: dict[str, Any], field: str, text_type: str) -> SemanticParts | None:
    """``Surface.semantic_parts`` of an API whose turns are the list ``body[field]``."""
    turns = body.get(field)
    text = last_user_text(turns, text_type)
    return (text, {**body, field: turns[:-1]}) if text is not None else None  # type: ignore[index]


def last_user_text(turns: Any, text_type: str) -> str | None:
    """The last of ``turns`` as text when it is the user's message and holds nothing but text: a
    string, or parts of ``text_type`` (images, audio, files: the text alone does not say what is asked)."""
    if not isinstance(turns, list) or not turns:
        return None
    turn = turns[-1]
    if not isinstance(turn, dict) or turn.get("role") != "user" or turn.get("type", "message") != "message":
        return None
    content = turn.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == text_type and isinstance(p.get("text"), str) for p in content):
            return None
        content = "\n".join(p["text"] for p in content)
    return content if isinstance(content, str) and content.strip() else None


def required(body: dict[str, Any], name: str) -> Any:
    """``body[name]``, which the API requires: OpenAI's 400 when it is missing or null."""
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    return value


def require_model(body: dict[str, Any]) -> str:
    """``model``, present and a non-empty string, as every API requires."""
    model = required(body, "model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


def streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a Chat or legacy Completions request streams, and whether it asked for the final
    usage chunk (``stream_options.include_usage``); a 400 naming a field of the wrong type."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    return bool(stream), bool(stream and options and options.get("include_usage"))
