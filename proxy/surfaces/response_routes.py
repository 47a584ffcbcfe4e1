"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

A response Sluice stored (bridged) is answered from the store; a native
one's route is forwarded to the provider that made it, with that provider's
credential rules. Either only for the identity that made it: for anyone
else, as for an id Sluice never saw, it does not exist (404).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import InvalidRequest, NotFound, SluiceError, error_response
from proxy.providers.base import Call, Provider
from proxy.surfaces.response_store import ResponseStore, StoredResponse

_MAX_LIMIT = 100


class ResponseRoutes:
    """The handlers, for routes with a ``{response_id}`` path parameter. Each also takes the
    caller's identity (``proxy.cache.keys.identity_of``, as the pipeline computes it) and the
    credential a ``pass_client_key`` provider may receive (None when Sluice's own keys are in use)."""

    def __init__(self, store: ResponseStore, providers: Mapping[str, Provider]) -> None:
        self.store = store
        self.providers = providers

    async def retrieve(self, request: Request, identity: str, authorization: str | None) -> Response:
        """``GET /v1/responses/{response_id}``."""
        response_id = request.path_params["response_id"]
        try:
            record = await self._owned(response_id, identity)
            if record is not None:
                return _json(record.response)
            return await self._forward("GET", response_id, "", request.url.query, identity, authorization)
        except SluiceError as error:
            return error_response(error)

    async def delete(self, request: Request, identity: str, authorization: str | None) -> Response:
        """``DELETE /v1/responses/{response_id}``."""
        response_id = request.path_params["response_id"]
        try:
            record = await self._owned(response_id, identity)
            if record is not None:
                await self.store.delete(response_id)
                return _json({"id": response_id, "object": "response.deleted", "deleted": True})
            deleted = await self._forward("DELETE", response_id, "", "", identity, authorization)
            if deleted.status_code < 300:  # its cached copies must not hand the id out again
                await self.store.delete(response_id)
            return deleted
        except SluiceError as error:
            return error_response(error)

    async def input_items(self, request: Request, identity: str, authorization: str | None) -> Response:
        """``GET /v1/responses/{response_id}/input_items`` (``limit``, ``order``, ``after``)."""
        response_id = request.path_params["response_id"]
        try:
            record = await self._owned(response_id, identity)
            if record is not None:
                return _json(page(record.input_items, request.query_params))
            return await self._forward("GET", response_id, "/input_items", request.url.query, identity, authorization)
        except SluiceError as error:
            return error_response(error)

    async def _owned(self, response_id: str, identity: str) -> StoredResponse | None:
        record = await self.store.get(response_id)
        if record is not None and record.identity != identity:
            raise not_found(response_id)
        return record

    async def _forward(
        self, method: str, response_id: str, tail: str, query: str, identity: str, authorization: str | None
    ) -> Response:
        """A native response's route, to the provider that made it, for the caller it was made for."""
        origin = await self.store.native_origin(response_id)
        provider = self.providers.get(origin.provider) if origin is not None and origin.identity == identity else None
        if provider is None:
            raise not_found(response_id)
        path = f"responses/{response_id}{tail}" + (f"?{query}" if query else "")
        status, body = await provider.forward(method, path, Call(model="", body={}, authorization=authorization))
        return Response(body, status_code=status, media_type="application/json")


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def page(items: list[dict[str, Any]], params: Mapping[str, str]) -> dict[str, Any]:
    """One page of a response's input items, as OpenAI lists them (newest first by default)."""
    raw_limit = params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MAX_LIMIT:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {_MAX_LIMIT}.", param="limit")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    ordered = items if order == "asc" else items[::-1]
    after = params.get("after")
    if after:
        position = next((i for i, item in enumerate(ordered) if item.get("id") == after), None)
        if position is None:
            raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
        ordered = ordered[position + 1 :]
    limit = int(raw_limit)
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


def _json(data: dict[str, Any]) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")
