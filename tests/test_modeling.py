"""The sentiflow classifier: Auto-class registration, safe loading, pooling, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
    PreTrainedTokenizerBase,
    pipeline,
)

from sentiflow.models.modeling import (
    MODEL_TYPE,
    SentiflowForSequenceClassification,
    UnsafeArtifactError,
    build_classifier,
    load_classifier,
    mean_pool,
)
from sentiflow.models.tiny import logits, make_encoder
from tests.support.classifier import LABELS, TEXTS, make_tiny_classifier


def saved(
    model: SentiflowForSequenceClassification, tokenizer: PreTrainedTokenizerBase, target: Path
) -> Path:
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_build_sets_labels_and_model_type(tmp_path: Path) -> None:
    model, _ = make_tiny_classifier(tmp_path)
    assert model.config.model_type == MODEL_TYPE
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert model.classifier.out_features == len(LABELS)


def test_build_keeps_pretrained_encoder_weights(tmp_path: Path) -> None:
    base = make_encoder(tmp_path / "base")
    model, _ = build_classifier(base, LABELS, seed=0)
    reference = BertModel.from_pretrained(base)
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[name]), name


def test_build_from_our_own_checkpoint_reuses_its_encoder(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    target = saved(model, tokenizer, tmp_path / "ckpt")
    rebuilt, _ = build_classifier(target, ["bear", "bull"], seed=0)
    assert rebuilt.config.id2label == {0: "bear", 1: "bull"}
    for name, tensor in rebuilt.encoder.state_dict().items():
        assert torch.equal(tensor, model.encoder.state_dict()[name]), name


def test_head_initialisation_follows_seed(tmp_path: Path) -> None:
    base = make_encoder(tmp_path / "base")
    first, _ = build_classifier(base, LABELS, seed=3)
    second, _ = build_classifier(base, LABELS, seed=3)
    other, _ = build_classifier(base, LABELS, seed=4)
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert not torch.equal(first.classifier.weight, other.classifier.weight)


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    target = saved(model, tokenizer, tmp_path / "ckpt")
    assert (target / "model.safetensors").is_file()
    loaded, loaded_tokenizer = load_classifier(target)
    assert isinstance(loaded, SentiflowForSequenceClassification)
    assert torch.equal(logits(model, tokenizer, TEXTS), logits(loaded, loaded_tokenizer, TEXTS))
    via_auto = AutoModelForSequenceClassification.from_pretrained(target).eval()
    assert torch.equal(logits(model, tokenizer, TEXTS), logits(via_auto, tokenizer, TEXTS))


def test_pipeline_opens_our_checkpoint(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    target = saved(model, tokenizer, tmp_path / "ckpt")
    classify = pipeline("text-classification", model=str(target))
    results = classify(TEXTS)
    assert [r["label"] in LABELS for r in results] == [True] * len(TEXTS)
    expected = logits(model, tokenizer, TEXTS).argmax(dim=-1).tolist()
    assert [r["label"] for r in results] == [LABELS[i] for i in expected]


def test_padding_does_not_change_logits(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    alone = logits(model, tokenizer, ["bear"])
    padded = logits(model, tokenizer, ["bear", "stocks rally on strong earnings beat record high"])
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_mean_pool_ignores_masked_positions() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]


def test_standard_hf_classifier_loads(tmp_path: Path) -> None:
    base = make_encoder(tmp_path / "base")
    config = BertConfig.from_pretrained(base, id2label=dict(enumerate(LABELS)))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    target = tmp_path / "bert-clf"
    BertForSequenceClassification(config).save_pretrained(target)  # type: ignore[no-untyped-call]
    BertTokenizer.from_pretrained(base).save_pretrained(target)
    model, tokenizer = load_classifier(target)
    assert isinstance(model, BertForSequenceClassification)
    assert logits(model, tokenizer, TEXTS).shape == (len(TEXTS), len(LABELS))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "state.pkl", "last.ckpt"])
def test_pickle_files_are_refused(tmp_path: Path, name: str) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    target = saved(model, tokenizer, tmp_path / "ckpt")
    (target / name).write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsafeArtifactError, match=name):
        load_classifier(target)


def test_missing_safetensors_is_refused(tmp_path: Path) -> None:
    model, tokenizer = make_tiny_classifier(tmp_path)
    target = saved(model, tokenizer, tmp_path / "ckpt")
    (target / "model.safetensors").unlink()
    with pytest.raises(UnsafeArtifactError, match="safetensors"):
        load_classifier(target)
    assert issubclass(UnsafeArtifactError, ValueError)


@pytest.mark.slow
def test_minilm_builds_with_untrained_head() -> None:
    model, tokenizer = build_classifier(None, LABELS, seed=0)
    assert model.config.encoder_config.hidden_size == 384
    out = logits(model.train(False), tokenizer, TEXTS)
    assert out.shape == (len(TEXTS), len(LABELS))
