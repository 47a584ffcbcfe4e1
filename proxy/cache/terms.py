"""The key terms of a query: the exact check behind every semantic cache hit.

Embeddings put "5 km in miles" next to "5 miles in km", "capital of France"
next to "capital of Germany" and "is X safe" next to "is X not safe": a
similarity threshold alone serves wrong answers (LiteLLM #6954). So two
queries may share an answer only when, besides being similar, they have the
same key terms in the same order: every word, number and symbol that is left
once wording that cannot change the answer is taken out (letter case,
punctuation, contractions, articles, and request phrasing such as "can you
tell me" or "please"). Numbers, units, negations, entities, question words,
prepositions and pronouns all stay, and their order is part of the key.

Pure string work, a few microseconds for a short query.
"""

from __future__ import annotations

import re
import unicodedata

# Whole phrases that only wrap a request. Removed before splitting into words.
_WRAPPERS = re.compile(
    r"""\b(?:
        (?:hi|hello|hey)(?:\s+there)?
      | (?:can|could|would|will)\s+you\s+(?:please\s+)?(?:tell|show|give)\s+me
      | (?:can|could|would|will)\s+you\s+(?:please\s+)?
      | (?:please\s+)?(?:tell|show|give)\s+me
      | (?:i\s+(?:want|would\s+like|need)\s+to\s+know)
      | do\s+you\s+know
      | quick\s+question
      | thanks(?:\s+in\s+advance)?
      | thank\s+you
      | please
      | kindly
    )\b""",
    re.VERBOSE,
)
_CONTRACTIONS = (
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'m\b"), " am"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"\b(what|where|who|when|how|why|which|that|there|it|he|she)'s\b"), r"\1 is"),
    (re.compile(r"\bcannot\b"), "can not"),
)
# Words, numbers (a sign, decimals and digit grouping kept) and symbols that carry meaning.
_TOKENS = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)?|\d+|[%$€£¥°+*/=<>^±√π×÷]")
_DROPPED = frozenset({"a", "an", "the"})


def normalize(text: str) -> str:
    """The query without what cannot change the answer's wording: case, contractions and
    request phrasing. The embedder sees this text too, so both judge the same words."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    return " ".join(_WRAPPERS.sub(" ", text).split())


def key_terms(normalized: str) -> tuple[str, ...]:
    """The key terms of a ``normalize``-d query, in order; equal tuples mean the same question."""
    return tuple(token for token in _TOKENS.findall(normalized) if token not in _DROPPED)
