"""Entities a text talks about: cashtags and a configured dictionary of names.

The first entity found (by position in the text) is the primary one and becomes the
Kafka key, so one entity's documents stay ordered on one partition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from sentiflow_client.v1 import events_pb2

from services.ingest.config import EntitySpec

# "$AAPL", "$BRK.B"; never "$100" (amounts start with a digit) nor "US$5". Upper case
# only: lower-case "$word" is far more often slang than a ticker. A "$" glued to a
# letter or digit before it ("US$AAPL", "A$B") starts none; that look-behind comes
# after the "$", so the search still jumps from "$" to "$" at C speed.
_CASHTAG = re.compile(r"\$(?<![^\W_]\$)([A-Z]{1,6}(?:\.[A-Z]{1,2})?)(?![\w$])")

CASHTAG = events_pb2.ENTITY_KIND_CASHTAG
DICTIONARY = events_pb2.ENTITY_KIND_DICTIONARY


class Match(NamedTuple):
    id: str
    name: str  # the surface form found in the text
    kind: int
    start: int


def load_entities_file(path: Path) -> list[EntitySpec]:
    """A JSON list of entity specs, e.g. ``[{"id": "acme", "names": ["Acme Corp"]}]``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entities")
    return [EntitySpec.model_validate(item) for item in data]


def _alternation(forms: Iterable[str], flags: int) -> re.Pattern[str] | None:
    # Longest first, so "Bank of America" wins over "Bank"; word boundaries by
    # look-around so names that start or end with punctuation ("AT&T", "Inc.") work.
    ordered = sorted(set(forms), key=lambda f: (-len(f), f))
    if not ordered:
        return None
    body = "|".join(re.escape(f) for f in ordered)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", flags)


class EntityMatcher:
    """Finds cashtags and dictionary names; built once, used for every document."""

    def __init__(self, specs: Sequence[EntitySpec] = (), *, cashtags: bool = True) -> None:
        self._cashtags = cashtags
        exact: dict[str, str] = {}
        folded: dict[str, str] = {}
        for spec in specs:
            for form in (*spec.names, *spec.aliases):
                form = form.strip()
                if not form:
                    continue
                if spec.case_sensitive:
                    exact.setdefault(form, spec.id)
                else:
                    folded.setdefault(form.casefold(), spec.id)
        self._exact = exact
        self._folded = folded
        self._exact_re = _alternation(exact, 0)
        self._folded_re = _alternation(folded, re.IGNORECASE)

    @property
    def has_dictionary(self) -> bool:
        return self._exact_re is not None or self._folded_re is not None

    def find(self, text: str) -> list[Match]:
        """Every distinct entity in order of first appearance."""
        dictionary = self._exact_re is not None or self._folded_re is not None
        if not dictionary:
            return self._cashtags_only(text) if self._cashtags and "$" in text else []
        found: list[Match] = []
        if self._cashtags and "$" in text:
            found.extend(_cashtag_matches(text))
        if self._exact_re is not None:
            found.extend(
                Match(self._exact[m.group(0)], m.group(0), DICTIONARY, m.start())
                for m in self._exact_re.finditer(text)
            )
        if self._folded_re is not None:
            for m in self._folded_re.finditer(text):
                entity = self._folded.get(m.group(0).casefold())
                if entity is not None:
                    found.append(Match(entity, m.group(0), DICTIONARY, m.start()))
        found.sort(key=lambda m: m.start)
        return _first_per_id(found)

    @staticmethod
    def _cashtags_only(text: str) -> list[Match]:
        # findall is several times cheaper than finditer with match objects, and
        # without a dictionary to interleave with, positions are not needed.
        seen: set[str] = set()
        out: list[Match] = []
        for ticker in _CASHTAG.findall(text):
            if ticker not in seen:
                seen.add(ticker)
                out.append(Match(ticker, "$" + ticker, CASHTAG, 0))
        return out


def _cashtag_matches(text: str) -> list[Match]:
    return [Match(m.group(1), m.group(0), CASHTAG, m.start()) for m in _CASHTAG.finditer(text)]


def _first_per_id(found: list[Match]) -> list[Match]:
    seen: set[str] = set()
    unique: list[Match] = []
    for match in found:
        if match.id not in seen:
            seen.add(match.id)
            unique.append(match)
    return unique
