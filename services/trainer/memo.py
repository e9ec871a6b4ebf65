"""What a registered version answers on the seed texts, remembered between rounds.

Every round asks the same questions of the same versions: production's labels on the
seed validation split (the gate's forgetting check) and the starting version's
probabilities on the replayed seed tweets (the distillation targets). A registered
version's weights never change, so its logits on a text are worth keeping until it is
replaced. Kept here, they are computed once: ahead of the round, while the trainer
waits for a labelling session to end (``Trainer.prepare``), or by the round that
registered the version, instead of inside every round between the last correction and
the new version going live.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

Compute = Callable[[list[str]], torch.Tensor]


class LogitsMemo:
    """Logit rows by (key, text), for the ``max_keys`` keys used last.

    A key names what decides the answer: the version and the token limit texts are
    cut to. Old keys are dropped whole, as production moves on.
    """

    def __init__(self, max_keys: int = 3) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._rows: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()

    def _for(self, key: Hashable) -> dict[str, torch.Tensor]:
        rows = self._rows.setdefault(key, {})
        self._rows.move_to_end(key)
        while len(self._rows) > self._max_keys:
            self._rows.popitem(last=False)
        return rows

    def missing(self, key: Hashable, texts: Sequence[str]) -> list[str]:
        """The distinct texts of ``texts`` with no row under ``key``, in order."""
        rows = self._rows.get(key, {})
        return list(dict.fromkeys(t for t in texts if t not in rows))

    def store(self, key: Hashable, texts: Sequence[str], logits: torch.Tensor) -> None:
        if len(texts) != len(logits):
            raise ValueError(f"{len(texts)} texts but {len(logits)} rows of logits")
        rows = self._for(key)
        for text, row in zip(texts, logits, strict=True):
            rows[text] = row.detach().clone()

    def logits(self, key: Hashable, texts: Sequence[str], compute: Compute) -> torch.Tensor:
        """One row per text, in order: remembered rows, and ``compute`` for the rest."""
        missing = self.missing(key, texts)
        if missing:
            self.store(key, missing, compute(missing))
        rows = self._for(key)
        if not texts:
            return torch.empty((0, 0))
        return torch.stack([rows[t] for t in texts])
