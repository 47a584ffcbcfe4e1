"""The Responses API surface, ``POST /v1/responses`` (CONTRACT §9).

Natively answered by OpenAI upstreams (``responses: true``); bridged over the
hub for every other provider: the request becomes a Chat Completions body
(``responses_request``), the answer a ``response`` object
(``responses_answer``), the stream Responses events (``responses_events``).
A bridged conversation's state lives in a ``ResponseStore``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from proxy.errors import SluiceError
from proxy.surfaces import responses_answer, responses_events, responses_request
from proxy.surfaces.base import NativeAssembler, ParsedRequest, SemanticParts, StreamRenderer, Surface, last_turn_parts
from proxy.surfaces.response_store import NativeOrigin, ResponseStore, StoredResponse
from proxy.surfaces.responses_answer import derived_id, text_part


class ResponsesSurface(Surface):
    api = "responses"
    path = "/v1/responses"
    remembers = True

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def parse(self, body: dict[str, Any]) -> ParsedRequest:
        return responses_request.parse(body)

    def to_hub(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return responses_request.to_hub(body, history)

    def semantic_parts(self, body: dict[str, Any]) -> SemanticParts | None:
        """``input`` as a string is one user turn, as an item of one ``input_text`` part is; the
        ``instructions`` and ``previous_response_id`` stay in the rest."""
        value = body.get("input")
        if isinstance(value, str):
            return (value, {**body, "input": []}) if value.strip() else None
        return last_turn_parts(body, "input", "input_text")

    def from_hub(self, completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
        return responses_answer.from_hub(completion, request)

    def renderer(self, request: dict[str, Any], include_usage: bool) -> StreamRenderer:
        return responses_events.HubRenderer(request)

    def assembler(self) -> NativeAssembler:
        return responses_events.ResponsesAssembler()

    def replay(self, answer: dict[str, Any], request: dict[str, Any]) -> bytes:
        return responses_events.replay(answer)

    def hub_usage(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        return responses_answer.hub_usage(answer.get("usage"))

    def error_event(self, error: SluiceError) -> bytes:
        return responses_events.error_event(error)

    async def history(self, body: dict[str, Any], identity: str) -> list[dict[str, Any]] | None:
        """The hub messages of the ``previous_response_id`` chain; None when Sluice did not store it
        (a native provider's id, or unknown: ``to_hub`` then answers 404). Another caller's
        response, stored or native, is ``NotFound``, as if it did not exist."""
        record = await self._previous(body, identity)
        if record is None:
            return None
        return responses_request.items_to_messages(conversation(record), "previous_response_id")

    async def answered(
        self, body: dict[str, Any], identity: str, answer: dict[str, Any], native: bool, provider: str
    ) -> None:
        response_id = answer.get("id")
        if not isinstance(response_id, str):
            return
        if native:
            await self.store.remember_native(response_id, NativeOrigin(provider, identity))
            return
        if body.get("store") is False:
            return
        previous = await self._previous(body, identity)
        items = conversation(previous) if previous is not None else []
        items.extend(numbered(responses_request.input_items(body), response_id))
        await self.store.put(StoredResponse(identity, answer, items))

    def reissued(self, completion: dict[str, Any]) -> dict[str, Any]:
        """A new seed for every id derived from the answer (``responses_answer.Ids``), and now as its time:
        each create is a response of its own, which the caller may delete without breaking another's."""
        return {**completion, "id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}

    async def still_kept(self, answer: dict[str, Any], body: dict[str, Any]) -> bool:
        """A native response is the upstream's, id included: a cached one is handed out again only while
        Sluice knows it is still stored there (not deleted through it); one with ``store: false`` always."""
        if body.get("store") is False:
            return True
        response_id = answer.get("id")
        return isinstance(response_id, str) and await self.store.native_origin(response_id) is not None

    async def _previous(self, body: dict[str, Any], identity: str) -> StoredResponse | None:
        previous_id = body.get("previous_response_id")
        if not previous_id:
            return None
        record = await self.store.get(previous_id)
        if record is not None:
            owner = record.identity
        else:
            origin = await self.store.native_origin(previous_id)
            owner = origin.identity if origin is not None else identity  # never seen: the upstream's to judge
        if owner != identity:
            raise responses_request.previous_not_found(previous_id)
        return record


def conversation(record: StoredResponse) -> list[dict[str, Any]]:
    """A stored response's whole conversation as items: its input (history included), then its output."""
    return [*record.input_items, *(record.response.get("output") or ())]


def numbered(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them: typed, with ids and a status, messages' content as parts."""
    listed = []
    for index, item in enumerate(items):
        kind = item.get("type", "message" if "role" in item else None)
        entry = {**item, "type": kind}
        content = item.get("content")
        if kind == "message" and isinstance(content, str):
            assistant = item.get("role") == "assistant"
            entry["content"] = [text_part(content) if assistant else {"type": "input_text", "text": content}]
        entry.setdefault("status", "completed")
        if not entry.get("id"):
            prefix = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}.get(str(kind), "item_")
            entry["id"] = derived_id(prefix, response_id, "input", index)
        listed.append(entry)
    return listed
