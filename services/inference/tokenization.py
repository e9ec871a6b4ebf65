"""Texts into token ids, once per text, at a cost bounded by the model's token limit.

A text is tokenized when it is queued, on the caller's thread, as in
text-embeddings-inference: the queue entry carries the encoding, its length is what the
batcher budgets, and the runner only pads and computes. The batching thread, which
owns the model, never waits on the tokenizer.

A tokenizer reads the whole of what it is given before truncating, so a 15,000-character
text would cost what dozens of texts at a 128-token limit do. Texts are therefore cut to
:data:`CHARS_PER_TOKEN` characters per token of the limit first, and the cut is kept
only where it provably changes nothing (see :func:`prefix_decides`); otherwise the cut
doubles, up to the whole text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tokenizers import Encoding, Tokenizer
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig

__all__ = [
    "CHARS_PER_TOKEN",
    "SEGMENT_INPUT",
    "BatchTokenizer",
    "Encoded",
    "TextEncoder",
    "prefix_decides",
    "resolve_max_length",
]

CHARS_PER_TOKEN = 16
"""Characters of text read per token of the limit before a cut is tried.

Tokens of the WordPiece, BPE and Unigram tokenizers served here average three to five
characters of ordinary text, so a cut this far out nearly always holds the limit's worth
of whole words; texts where it does not (long whitespace runs, words read as one unknown
token) are retried with a longer cut rather than encoded wrongly.
"""

# The model input that tells sentence A from sentence B, where a model has one.
SEGMENT_INPUT = "token_type_ids"
# Above this a tokenizer's model_max_length is the "unset" sentinel, not a real limit.
_UNSET_MAX_LENGTH = 1_000_000


@dataclass(frozen=True, slots=True)
class Encoded:
    """One text as a model reads it: token ids after truncation, not yet padded.

    ``tokenizer`` names the tokenizer and limit that produced the ids. A model swapped in
    between queueing and running may tokenize differently, and then re-encodes ``text``
    (see :meth:`TextEncoder.adopt`) rather than read another vocabulary's ids.
    """

    text: str
    ids: Sequence[int]
    type_ids: Sequence[int]
    truncated: bool
    tokenizer: str

    @property
    def tokens(self) -> int:
        return len(self.ids)


class BatchTokenizer(Protocol):
    """The part of a ``tokenizers.Tokenizer`` that encoding uses: one batch call."""

    def encode_batch(
        self,
        input: Sequence[str],
        is_pretokenized: bool = False,
        add_special_tokens: bool = True,
    ) -> list[Encoding]: ...


def _max_positions(config: PreTrainedConfig) -> int | None:
    """Position-embedding size, looking inside wrapper configs that nest an encoder's."""
    for candidate in (config, getattr(config, "encoder", None)):
        value = getattr(candidate, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_max_length(
    tokenizer_max: int | None, max_positions: int | None, requested: int | None
) -> int:
    """The tightest of the requested length, the tokenizer's limit and the model's."""
    limits = [
        n
        for n in (requested, tokenizer_max, max_positions)
        if n is not None and 0 < n < _UNSET_MAX_LENGTH
    ]
    if not limits:
        raise ValueError("cannot tell the model's maximum length; pass max_length")
    return min(limits)


def _words(encoding: Encoding) -> list[int]:
    """Word index of each non-special token, in order."""
    return [w for w in encoding.word_ids if w is not None]


def prefix_decides(encoding: Encoding) -> bool:
    """Whether the truncated encoding of a cut text is also the whole text's.

    Tokenizers split the normalized text into words and tokenize each word on its own,
    so every word that ends before the cut comes out as it would from the whole text;
    only the last word may have been cut through. When every kept token belongs to an
    earlier word and tokens remain after them, the whole text keeps exactly these
    tokens and is truncated as well. A cut that reaches into the kept words, or a
    prefix too sparse to fill the limit, decides nothing.
    """
    if not encoding.overflowing:
        return False
    kept = _words(encoding)
    last = _words(encoding.overflowing[-1])
    return bool(last) and (not kept or max(kept) < last[-1])


def _tokenizer_key(serialized: str, max_length: int) -> str:
    return hashlib.sha256(f"{max_length}\n{serialized}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TextEncoder:
    """A truncating, non-padding tokenizer for one checkpoint, with its padding facts.

    ``tokenizer`` must truncate to ``max_length`` and not pad; build one with
    :meth:`from_checkpoint`. Thread-safe: its settings never change after that, which is
    why it is a private copy rather than the Hugging Face wrapper, which reconfigures
    its shared Rust tokenizer on every call.
    """

    tokenizer: BatchTokenizer
    max_length: int
    pad_id: int
    wants_token_types: bool
    key: str

    @classmethod
    def from_checkpoint(cls, checkpoint: Path, requested_max_length: int | None) -> TextEncoder:
        wrapper = AutoTokenizer.from_pretrained(checkpoint)
        backend = getattr(wrapper, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ValueError(f"{checkpoint}: a fast (Rust) tokenizer is required")
        config = AutoConfig.from_pretrained(checkpoint)
        max_length = resolve_max_length(
            wrapper.model_max_length, _max_positions(config), requested_max_length
        )
        serialized = backend.to_str()
        tokenizer = Tokenizer.from_str(serialized)
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        return cls(
            tokenizer=tokenizer,
            max_length=max_length,
            pad_id=int(wrapper.pad_token_id or 0),
            wants_token_types=SEGMENT_INPUT in wrapper.model_input_names,
            key=_tokenizer_key(serialized, max_length),
        )

    @property
    def char_bound(self) -> int:
        """Where texts are first cut (see the module docstring)."""
        return self.max_length * CHARS_PER_TOKEN

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Each text's encoding, identical to tokenizing it whole and then truncating."""
        done: dict[int, Encoded] = {}
        pending = list(range(len(texts)))
        bound = self.char_bound
        while pending:
            encodings = self.tokenizer.encode_batch(
                [texts[i][:bound] for i in pending], add_special_tokens=True
            )
            retry = []
            for i, encoding in zip(pending, encodings, strict=True):
                if len(texts[i]) <= bound or prefix_decides(encoding):
                    done[i] = self._encoded(texts[i], encoding)
                else:
                    retry.append(i)
            pending, bound = retry, bound * 2
        return [done[i] for i in range(len(texts))]

    def adopt(self, encoded: Sequence[Encoded]) -> list[Encoded]:
        """The same texts in this tokenizer's ids: as given where they already are."""
        foreign = [i for i, e in enumerate(encoded) if e.tokenizer != self.key]
        if not foreign:
            return list(encoded)
        out = list(encoded)
        redone = self.encode([encoded[i].text for i in foreign])
        for i, again in zip(foreign, redone, strict=True):
            out[i] = again
        return out

    def _encoded(self, text: str, encoding: Encoding) -> Encoded:
        return Encoded(
            text=text,
            ids=encoding.ids,
            type_ids=encoding.type_ids,
            truncated=bool(encoding.overflowing),
            tokenizer=self.key,
        )
