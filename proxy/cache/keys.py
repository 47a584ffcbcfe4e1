"""Cache keys: a hash of the canonical request and the caller's identity."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Fields that cannot change the answer's content (CONTRACT §6).
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "model"})


def identity_of(authorization: str | None, key_name: str | None) -> str:
    """Who is asking: the proxy key's name, else a hash of the passed-through credential."""
    if key_name is not None:
        return f"key:{key_name}"
    if not authorization:
        return "anonymous"
    return "cred:" + hashlib.blake2b(authorization.encode(), digest_size=12).hexdigest()


def cache_key(kind: str, route_key: str, body: dict[str, Any], identity: str, compression: str) -> str:
    """Sorted-key JSON of everything that can change the answer, hashed.

    ``compression`` is part of the key because the cache is consulted before
    the prompt is rewritten: a hit then skips compression altogether.
    """
    canonical = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    material = orjson.dumps(
        [kind, route_key, identity, compression, canonical], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    )
    return hashlib.blake2b(material, digest_size=20).hexdigest()
