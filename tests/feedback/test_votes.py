"""The pure aggregation: weights, settling, replacement, trust and quality deltas."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentiflow_client.v1 import events_pb2

from services.feedback import votes
from services.feedback.votes import Rules, Signal, Step, Trust

RULES = Rules()
CORRECT = events_pb2.FEEDBACK_KIND_CORRECT


def signal(user: str, label: str, n: int, doc: str = "d1", version: str = "v1") -> Signal:
    return Signal(
        event_id=f"e{n}",
        doc_id=doc,
        model="sentiment",
        label=label,
        user=user,
        kind=CORRECT,
        created_ms=1_000 * n,
        model_version=version,
    )


def fold(
    signals: Iterable[Signal],
    trust: dict[str, Trust] | None = None,
    predicted: str = "neutral",
    roundtrip: bool = False,
) -> tuple[votes.DocState | None, list[Step]]:
    """Apply signals in order, keeping trust up to date like the aggregation does."""
    trust = dict(trust or {})
    state: votes.DocState | None = None
    steps = []
    for s in signals:
        step = votes.apply(
            state, s, trust.get(s.user, Trust()), RULES, text="t", predicted=predicted
        )
        for user, d in step.trust_deltas.items():
            t = trust.get(user, Trust())
            trust[user] = Trust(t.agree + d.agree, t.disagree + d.disagree)
        state = step.state
        if roundtrip:
            state = votes.decode(votes.encode(state), s.doc_id)
        steps.append(step)
    return state, steps


def settled_label(state: votes.DocState | None) -> str | None:
    assert state is not None
    s = state.models["sentiment"].settled
    return s.label if s is not None else None


def test_a_new_user_starts_low_and_weight_is_bounded() -> None:
    assert votes.weight(Trust(), RULES) == pytest.approx(0.5)
    assert votes.weight(Trust(agree=6), RULES) == pytest.approx(0.8)
    assert votes.weight(Trust(agree=10_000), RULES) <= RULES.max_weight
    assert votes.weight(Trust(disagree=10_000), RULES) == pytest.approx(RULES.min_weight)
    assert votes.weight(Trust(agree=2, disagree=2), RULES) == pytest.approx(0.5)


def test_one_new_user_does_not_settle_two_agreeing_do() -> None:
    state, steps = fold([signal("alice", "positive", 1)])
    assert settled_label(state) is None
    assert steps[0].settled is None
    state, steps = fold([signal("alice", "positive", 1), signal("bob", "positive", 2)])
    settled = steps[1].settled
    assert settled == votes.Settlement("positive", 1, 1.0, 2, 2_000)
    assert not steps[1].replaced


def test_one_trusted_user_settles_alone() -> None:
    _state, steps = fold([signal("carol", "negative", 1)], trust={"carol": Trust(agree=6)})
    assert steps[0].settled is not None
    assert steps[0].settled.label == "negative"


def test_a_disagreeing_low_trust_user_cannot_flip_a_settled_label() -> None:
    agreed = [signal("alice", "positive", 1), signal("bob", "positive", 2)]
    mallory = [signal("mallory", "negative", n) for n in range(3, 8)]
    state, steps = fold([*agreed, *mallory])
    assert settled_label(state) == "positive"
    assert [s.settled for s in steps[2:]] == [None] * 5
    # Even a fully trusted account cannot overturn it alone.
    state, _ = fold([*agreed, signal("trent", "negative", 3)], trust={"trent": Trust(agree=99)})
    assert settled_label(state) == "positive"


def test_a_clear_majority_replaces_the_label_and_rescores_every_voter() -> None:
    agreed = [signal("alice", "positive", 1), signal("bob", "positive", 2)]
    others = [signal(u, "negative", n) for n, u in enumerate(["c", "d", "e", "f"], start=3)]
    state, steps = fold([*agreed, *others])
    assert settled_label(state) == "negative"
    replacement = next(s for s in steps if s.settled is not None and s.replaced)
    assert replacement.settled is not None
    assert replacement.settled.revision == 2
    # alice and bob go from agreeing to disagreeing; the negative voters now agree.
    assert replacement.trust_deltas["alice"] == Trust(agree=-1, disagree=1)
    assert all(replacement.trust_deltas[u] == Trust(agree=1, disagree=-1) for u in "cde")
    assert replacement.trust_deltas["f"] == Trust(agree=1)


def test_a_tie_keeps_the_settled_label() -> None:
    state, _ = fold(
        [
            signal("alice", "positive", 1),
            signal("bob", "positive", 2),
            signal("carol", "negative", 3),
            signal("dave", "negative", 4),
        ]
    )
    assert settled_label(state) == "positive"


def test_a_users_later_signal_replaces_their_vote() -> None:
    state, _ = fold([signal("alice", "positive", 1), signal("alice", "negative", 2)])
    assert state is not None
    model = state.models["sentiment"]
    assert {u: v.label for u, v in model.votes.items()} == {"alice": "negative"}
    assert len(state.signals) == 2


def test_a_duplicate_event_changes_nothing() -> None:
    first = signal("alice", "positive", 1)
    state, _ = fold([first, signal("bob", "positive", 2)])
    step = votes.apply(state, first, Trust(), RULES)
    assert step.duplicate
    assert step.state == state
    assert not step.trust_deltas
    assert step.settled is None
    assert not step.quality_deltas


def test_late_voters_are_credited_against_the_settled_label() -> None:
    _, steps = fold(
        [
            signal("alice", "positive", 1),
            signal("bob", "positive", 2),
            signal("carol", "negative", 3),
            signal("dave", "positive", 4),
        ]
    )
    assert steps[1].trust_deltas == {"alice": Trust(agree=1), "bob": Trust(agree=1)}
    assert steps[2].trust_deltas == {"carol": Trust(disagree=1)}
    assert steps[3].trust_deltas == {"dave": Trust(agree=1)}


def test_quality_counts_follow_the_settled_label() -> None:
    _, steps = fold(
        [
            signal("alice", "positive", 1),
            signal("bob", "positive", 2),
            *[signal(u, "negative", n) for n, u in enumerate(["c", "d", "e", "f"], start=3)],
        ],
        predicted="neutral",
    )
    assert steps[1].quality_deltas == {("sentiment", "v1", "positive", "neutral"): 1}
    replacement = next(s for s in steps if s.replaced)
    assert replacement.quality_deltas == {
        ("sentiment", "v1", "positive", "neutral"): -1,
        ("sentiment", "v1", "negative", "neutral"): 1,
    }


def test_the_text_and_prediction_seen_first_are_kept() -> None:
    step = votes.apply(None, signal("a", "positive", 1), Trust(), RULES, text="one", predicted="x")
    later = votes.apply(
        step.state, signal("b", "positive", 2), Trust(), RULES, text="two", predicted="y"
    )
    assert later.state.text == "one"
    assert later.state.models["sentiment"].predictions == {"v1": "x"}


labels = st.sampled_from(["negative", "neutral", "positive"])
users = st.sampled_from(["u1", "u2", "u3", "u4", "u5"])
histories = st.lists(st.tuples(users, labels), min_size=1, max_size=30)


def _signals(history: list[tuple[str, str]]) -> list[Signal]:
    return [signal(u, label, n) for n, (u, label) in enumerate(history, start=1)]


@settings(max_examples=150, deadline=None)
@given(history=histories)
def test_replaying_gives_the_same_state_and_outputs(history: list[tuple[str, str]]) -> None:
    signals = _signals(history)
    state, steps = fold(signals)
    again, steps_again = fold(signals, roundtrip=True)
    assert again == state
    assert [(s.settled, s.trust_deltas, s.quality_deltas) for s in steps] == [
        (s.settled, s.trust_deltas, s.quality_deltas) for s in steps_again
    ]
    # Revisions count label changes and published settlements always change the label.
    published = [s.settled for s in steps if s.settled is not None]
    assert [p.revision for p in published] == list(range(1, len(published) + 1))
    assert all(a.label != b.label for a, b in itertools.pairwise(published))


@settings(max_examples=150, deadline=None)
@given(
    history=histories,
    attacker_trust=st.integers(min_value=0, max_value=1000),
    attacks=st.lists(labels, min_size=1, max_size=10),
)
def test_no_single_account_flips_a_settled_label(
    history: list[tuple[str, str]], attacker_trust: int, attacks: list[str]
) -> None:
    signals = _signals(history)
    state, _ = fold(signals)
    assert state is not None
    model = state.models["sentiment"]
    before = model.settled
    tallies = votes.tally(model.votes)
    if before is None or tallies.get(before.label, (0.0, 0))[0] < RULES.settle_weight:
        return  # nothing settled, or its voters have left it: not a label one can defend
    # On its own: for labels nobody else backs (a label others back is a majority's).
    alone = [label for label in attacks if label not in tallies]
    n = len(signals)
    attack = [signal("mallory", label, n + i) for i, label in enumerate(alone, start=1)]
    after, _ = fold([*signals, *attack], trust={"mallory": Trust(agree=attacker_trust)})
    assert settled_label(after) == before.label
