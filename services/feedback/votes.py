"""From user signals about one document to a settled label: pure and deterministic.

One step takes a document's aggregate, one signal and the signalling user's trust,
and returns the new aggregate plus what changed elsewhere (trust of every voter,
confusion-matrix cells, a settlement to publish). No I/O, no clocks: the settlement
time is the signal's own timestamp, so replaying the same signals in the same order
yields the same aggregates, revisions and examples bit for bit.

The rules:

* A user's **weight** is their past agreement with settled labels, shrunk towards
  the new-user weight by a prior worth ``prior_votes`` votes, and bounded to
  ``[min_weight, max_weight]``. A new user starts at ``new_user_weight``; a user who
  keeps agreeing approaches ``max_weight``; one who keeps disagreeing sinks to
  ``min_weight``. A vote keeps the weight its user had when it was counted.
* Each user has one vote per (document, model): a later signal replaces their
  earlier one, so an account cannot stack votes.
* A label **settles** when its weighted votes reach ``settle_weight``, it holds at
  least ``min_agreement`` of all the weight, and it has ``min_votes`` votes. With the
  defaults (new users 0.5, settle at 0.8) two agreeing new users settle a label, one
  new user does not, and one user with weight 0.8 or more (six net agreements) does.
* A settled label is **replaced** only when another label meets the same test. Until
  then it stands, even if its support erodes. ``min_agreement > 1/2`` means at most
  one label can qualify, and the configuration check makes sure no single account
  (at most ``max_weight``) can outvote a settled label on its own.
* When the settled label changes, every voter's agreement is re-scored: the trust
  deltas move each voter from their old standing on this document to the new one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

# Sums of weights are compared against thresholds; 0.5 + 0.3 must reach 0.8.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Rules:
    """How signals become a settled label (``SENTIFLOW_FEEDBACK__VOTES__*``)."""

    new_user_weight: float = 0.5  # weight of a user with no past
    min_weight: float = 0.1
    max_weight: float = 1.0
    prior_votes: float = 4.0  # how many settled votes the new-user weight counts as
    settle_weight: float = 0.8  # weighted votes the winning label needs to settle
    min_agreement: float = 2 / 3  # share of the weight the winning label needs
    min_votes: int = 1

    def __post_init__(self) -> None:
        """Refuse rules under which one account could overturn a settled label.

        A settled label has at least ``settle_weight`` behind it; a challenger needs
        ``min_agreement`` of all the weight, i.e. ``settle_weight * a / (1 - a)`` or
        more. One account weighs at most ``max_weight``.
        """
        if min(self.new_user_weight, self.min_weight, self.prior_votes, self.settle_weight) <= 0:
            raise ValueError("weights, prior_votes and settle_weight must be positive")
        if not 0.5 < self.min_agreement <= 1:
            raise ValueError("min_agreement must be in (0.5, 1]")
        if self.min_votes < 1:
            raise ValueError("min_votes must be at least 1")
        if not self.min_weight <= self.new_user_weight <= self.max_weight:
            raise ValueError("need min_weight <= new_user_weight <= max_weight")
        a = self.min_agreement
        needed = float("inf") if a >= 1 else self.settle_weight * a / (1 - a)
        if self.max_weight >= needed:
            raise ValueError(
                f"max_weight {self.max_weight} would let one account flip a settled label "
                f"(a flip needs {needed:.3f}); lower it or raise settle_weight/min_agreement"
            )


@dataclass(frozen=True)
class Trust:
    """How often a user's votes matched the label their documents settled on."""

    agree: int = 0
    disagree: int = 0


@dataclass(frozen=True)
class Signal:
    """One accepted feedback event, as the aggregation needs it."""

    event_id: str
    doc_id: str
    model: str
    label: str
    user: str
    kind: int
    created_ms: int
    model_version: str = ""
    channel: str = ""


@dataclass(frozen=True)
class Counted:
    """A signal as recorded on its document, with the weight it was counted at."""

    signal: Signal
    weight: float


@dataclass(frozen=True)
class Vote:
    label: str
    weight: float
    event_id: str


@dataclass(frozen=True)
class Settlement:
    label: str
    revision: int  # 1 for the first settled label, +1 for each replacement
    agreement: float  # the label's share of all the weight
    votes: int  # votes counted when it settled (every label)
    settled_ms: int  # the timestamp of the signal that settled it


@dataclass(frozen=True)
class ModelState:
    votes: Mapping[str, Vote] = field(default_factory=dict)  # user -> their latest vote
    settled: Settlement | None = None
    # version -> the label that version predicted, for the versions users saw.
    predictions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DocState:
    text: str = ""
    signals: tuple[Counted, ...] = ()
    models: Mapping[str, ModelState] = field(default_factory=dict)

    def seen(self, event_id: str) -> bool:
        return any(c.signal.event_id == event_id for c in self.signals)

    def settled_any(self) -> bool:
        return any(m.settled is not None for m in self.models.values())


# (model, version, settled label, predicted label)
QualityCell = tuple[str, str, str, str]


@dataclass(frozen=True)
class Step:
    state: DocState
    duplicate: bool = False
    weight: float = 0.0
    trust_deltas: Mapping[str, Trust] = field(default_factory=dict)
    quality_deltas: Mapping[QualityCell, int] = field(default_factory=dict)
    # A new settled label to publish (first settlement or replacement), else None.
    settled: Settlement | None = None
    replaced: bool = False


def weight(trust: Trust, rules: Rules) -> float:
    """The weight of a user's next vote, from their agreement record."""
    prior_rate = rules.new_user_weight / rules.max_weight
    votes = trust.agree + trust.disagree
    rate = (trust.agree + rules.prior_votes * prior_rate) / (votes + rules.prior_votes)
    return min(rules.max_weight, max(rules.min_weight, rules.max_weight * rate))


def tally(votes: Mapping[str, Vote]) -> dict[str, tuple[float, int]]:
    """label -> (weight, count), summed in user order so the floats never differ."""
    out: dict[str, tuple[float, int]] = {}
    for user in sorted(votes):
        vote = votes[user]
        total, count = out.get(vote.label, (0.0, 0))
        out[vote.label] = (total + vote.weight, count + 1)
    return out


def decide(
    votes: Mapping[str, Vote], current: Settlement | None, rules: Rules, now_ms: int
) -> Settlement | None:
    """The settled label after these votes: a new one only if another label qualifies."""
    tallies = tally(votes)
    if not tallies:
        return current
    total = sum(w for w, _ in tallies.values())
    leader = max(sorted(tallies), key=lambda label: tallies[label][0])
    support, count = tallies[leader]
    agreement = support / total if total > 0 else 0.0
    qualifies = (
        support + _EPSILON >= rules.settle_weight
        and agreement + _EPSILON >= rules.min_agreement
        and count >= rules.min_votes
    )
    if not qualifies or (current is not None and current.label == leader):
        return current
    revision = (current.revision if current is not None else 0) + 1
    return Settlement(leader, revision, agreement, len(votes), now_ms)


def credits(state: ModelState) -> dict[str, bool]:
    """user -> whether their vote matches the settled label (nobody, if unsettled)."""
    if state.settled is None:
        return {}
    return {user: vote.label == state.settled.label for user, vote in state.votes.items()}


def trust_changes(old: ModelState, new: ModelState) -> dict[str, Trust]:
    """Per voter, the agree/disagree counts to add to move from old to new standing."""
    before, after = credits(old), credits(new)
    out: dict[str, Trust] = {}
    for user in sorted(before.keys() | after.keys()):
        b, a = before.get(user), after.get(user)
        delta = Trust(
            agree=int(a is True) - int(b is True),
            disagree=int(a is False) - int(b is False),
        )
        if delta != Trust():
            out[user] = delta
    return out


def contributions(model: str, state: ModelState) -> Counter[QualityCell]:
    """The confusion-matrix cells this document adds: one per version users saw."""
    cells: Counter[QualityCell] = Counter()
    if state.settled is not None:
        for version, predicted in state.predictions.items():
            cells[(model, version, state.settled.label, predicted)] += 1
    return cells


def quality_changes(model: str, old: ModelState, new: ModelState) -> dict[QualityCell, int]:
    before, after = contributions(model, old), contributions(model, new)
    out = {cell: after[cell] - before[cell] for cell in sorted(before.keys() | after.keys())}
    return {cell: n for cell, n in out.items() if n}


def apply(
    state: DocState | None,
    signal: Signal,
    trust: Trust,
    rules: Rules,
    *,
    text: str = "",
    predicted: str | None = None,
) -> Step:
    """Count one signal.

    ``text`` is the document's text and ``predicted`` the label ``signal.model_version``
    gave it, both read from the document store; each is kept from its first sighting,
    so later steps (and replays) do not depend on the store any more.
    """
    current = state if state is not None else DocState()
    if current.seen(signal.event_id):
        return Step(state=current, duplicate=True)
    old = current.models.get(signal.model, ModelState())
    predictions = dict(old.predictions)
    if signal.model_version and predicted and signal.model_version not in predictions:
        predictions[signal.model_version] = predicted
    w = weight(trust, rules)
    votes = {**old.votes, signal.user: Vote(signal.label, w, signal.event_id)}
    settled = decide(votes, old.settled, rules, signal.created_ms)
    new = ModelState(votes=votes, settled=settled, predictions=predictions)
    changed = settled is not old.settled
    next_state = DocState(
        text=current.text or text,
        signals=(*current.signals, Counted(signal, w)),
        models={**current.models, signal.model: new},
    )
    return Step(
        state=next_state,
        weight=w,
        trust_deltas=trust_changes(old, new),
        quality_deltas=quality_changes(signal.model, old, new),
        settled=settled if changed else None,
        replaced=changed and old.settled is not None,
    )


# -- storage form -------------------------------------------------------------------
# Compact JSON with short keys: one document's aggregate is read and written on every
# signal about it.


def _signal_json(c: Counted) -> dict[str, object]:
    s = c.signal
    return {
        "id": s.event_id,
        "u": s.user,
        "m": s.model,
        "l": s.label,
        "k": s.kind,
        "t": s.created_ms,
        "v": s.model_version,
        "c": s.channel,
        "w": c.weight,
    }


def _settlement_json(s: Settlement | None) -> dict[str, object] | None:
    if s is None:
        return None
    return {"l": s.label, "r": s.revision, "a": s.agreement, "n": s.votes, "t": s.settled_ms}


def encode(state: DocState) -> bytes:
    body = {
        "text": state.text,
        "signals": [_signal_json(c) for c in state.signals],
        "models": {
            name: {
                "votes": {u: [v.label, v.weight, v.event_id] for u, v in sorted(m.votes.items())},
                "settled": _settlement_json(m.settled),
                "pred": dict(sorted(m.predictions.items())),
            }
            for name, m in sorted(state.models.items())
        },
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes, doc_id: str) -> DocState:
    body = json.loads(raw)
    signals = tuple(
        Counted(
            Signal(
                event_id=s["id"],
                doc_id=doc_id,
                model=s["m"],
                label=s["l"],
                user=s["u"],
                kind=int(s["k"]),
                created_ms=int(s["t"]),
                model_version=s["v"],
                channel=s["c"],
            ),
            float(s["w"]),
        )
        for s in body["signals"]
    )
    models = {
        name: ModelState(
            votes={u: Vote(v[0], float(v[1]), v[2]) for u, v in m["votes"].items()},
            settled=_settlement(m["settled"]),
            predictions=dict(m["pred"]),
        )
        for name, m in body["models"].items()
    }
    return DocState(text=body["text"], signals=signals, models=models)


def _settlement(raw: Mapping[str, object] | None) -> Settlement | None:
    if raw is None:
        return None
    return Settlement(
        label=str(raw["l"]),
        revision=int(str(raw["r"])),
        agreement=float(str(raw["a"])),
        votes=int(str(raw["n"])),
        settled_ms=int(str(raw["t"])),
    )
