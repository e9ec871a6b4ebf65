"""Cashtags and dictionary entities, in order of appearance, primary first."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.config import EntitySpec
from services.ingest.entities import CASHTAG, DICTIONARY, EntityMatcher

ACME = EntitySpec(id="acme-corp", names=["Acme Corp"], aliases=["Acme", "ACME Inc."])
APPLE = EntitySpec(id="AAPL", names=["Apple"])
GE = EntitySpec(id="GE", names=["General Electric"], aliases=["ge"], case_sensitive=False)


def ids(text: str, matcher: EntityMatcher | None = None) -> list[str]:
    return [m.id for m in (matcher or EntityMatcher()).find(text)]


def test_cashtags_with_class_suffix_but_not_amounts() -> None:
    assert ids("$AAPL and $BRK.B rally; $100 gone, US$5 too, $5bn deal") == ["AAPL", "BRK.B"]
    assert ids("US$AAPL, A$B, 1$C and é$E are glued; _$D and ($F) are not") == ["D", "F"]
    assert ids("$TSLA's delivery miss, then $TSLA again.") == ["TSLA"]
    assert ids("no tags here") == []


def test_dictionary_matches_on_word_boundaries_longest_first() -> None:
    matcher = EntityMatcher([ACME, APPLE])
    assert ids("Acme Corp buys Apple", matcher) == ["acme-corp", "AAPL"]
    assert ids("Acmeology and Pineapple are not entities", matcher) == []
    found = matcher.find("ACME Inc. rises")
    assert [(m.id, m.name, m.kind) for m in found] == [("acme-corp", "ACME Inc.", DICTIONARY)]


def test_case_aware_matching() -> None:
    matcher = EntityMatcher([APPLE, GE])
    assert ids("an apple a day", matcher) == []  # the fruit is not the company
    assert ids("Apple slips", matcher) == ["AAPL"]
    assert ids("GE and general electric", matcher) == ["GE"]


def test_first_entity_by_position_is_primary_and_ids_are_unique() -> None:
    matcher = EntityMatcher([APPLE])
    found = matcher.find("Apple said $MSFT and $AAPL beat")
    assert [(m.id, m.kind) for m in found] == [("AAPL", DICTIONARY), ("MSFT", CASHTAG)]


def test_cashtags_can_be_turned_off() -> None:
    assert ids("$AAPL", EntityMatcher(cashtags=False)) == []


TICKER = re.compile(r"\$([A-Z]{1,6}(?:\.[A-Z]{1,2})?)(?![\w$])")


def defined_cashtags(text: str) -> list[tuple[str, str, int]]:
    """Cashtags as defined: "$" and the ticker, unless the "$" follows a letter or a
    digit ("US$AAPL"); each ticker once, in order of first appearance."""
    found: dict[str, tuple[str, str, int]] = {}
    for m in TICKER.finditer(text):
        glued = m.start() > 0 and text[m.start() - 1].isalnum()
        if not glued:
            found.setdefault(m.group(1), (m.group(1), m.group(0), m.start()))
    return list(found.values())


PIECES = ["$AAPL", "$BRK.B", "$BRK.BXY", "$TOOLONGX", "US", "$", "x", "_", "é", "1", " ", "."]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=10).map("".join))
def test_cashtags_are_their_definition(text: str) -> None:
    expected = defined_cashtags(text)
    assert [(m.id, m.name) for m in EntityMatcher().find(text)] == [e[:2] for e in expected]
    with_dictionary = EntityMatcher([APPLE]).find(text.replace("Apple", ""))
    assert [(m.id, m.name, m.start) for m in with_dictionary] == defined_cashtags(
        text.replace("Apple", "")
    )
