"""Cashtags and dictionary entities, in order of appearance, primary first."""

from __future__ import annotations

from services.ingest.config import EntitySpec
from services.ingest.entities import CASHTAG, DICTIONARY, EntityMatcher

ACME = EntitySpec(id="acme-corp", names=["Acme Corp"], aliases=["Acme", "ACME Inc."])
APPLE = EntitySpec(id="AAPL", names=["Apple"])
GE = EntitySpec(id="GE", names=["General Electric"], aliases=["ge"], case_sensitive=False)


def ids(text: str, matcher: EntityMatcher | None = None) -> list[str]:
    return [m.id for m in (matcher or EntityMatcher()).find(text)]


def test_cashtags_with_class_suffix_but_not_amounts() -> None:
    assert ids("$AAPL and $BRK.B rally; $100 gone, US$5 too, $5bn deal") == ["AAPL", "BRK.B"]
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
