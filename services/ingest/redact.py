"""Personal data replaced by typed placeholders before anything is published.

Patterns are deliberately conservative for financial text, where numbers are the
content: card numbers must pass the Luhn check, IBANs the ISO 7064 mod-97 check, and
phone numbers need a phone-like shape (a leading "+", or grouped digits such as
555-123-4567), so amounts, dates and tickers are left alone. Every quantifier is
bounded and anchored at a boundary, so no input makes these regexes quadratic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

Kind = Literal["email", "phone", "iban", "card"]
ALL_KINDS: tuple[Kind, ...] = ("email", "iban", "card", "phone")

PLACEHOLDER: dict[Kind, str] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "iban": "[IBAN]",
    "card": "[CARD]",
}

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)
# Printed form in groups of four, or the compact electronic form.
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?|[A-Z0-9]{11,30})"
    r"(?![A-Za-z0-9])"
)
_CARD = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){12,18}(?![\d]|[.,]\d)")
# Not glued to other digit groups either side: a run of groups is an account number
# or a table of figures, not a phone number.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # +44 20 7946 0958, +1 (555) 123-4567
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3}\1\d{4}"  # 555-123-4567, 555.123.4567
    r"|0\d{2,4} \d{3,4} ?\d{3,4}"  # 020 7946 0958
    r")(?!\w|[ .-]\d)"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _iban(match: re.Match[str]) -> str | None:
    found = match.group(0)
    # A printed IBAN may be followed by another upper-case group that is not part of
    # it: drop trailing groups until the check digits agree.
    parts = found.split(" ")
    while parts:
        candidate = " ".join(parts)
        if iban_valid(candidate):
            rest = found[len(candidate) :]
            return PLACEHOLDER["iban"] + rest
        parts.pop()
    return None


def _card(match: re.Match[str]) -> str | None:
    digits = _digits(match.group(0))
    return PLACEHOLDER["card"] if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _phone(match: re.Match[str]) -> str | None:
    return PLACEHOLDER["phone"] if 7 <= len(_digits(match.group(0))) <= 15 else None


def _email(_match: re.Match[str]) -> str | None:
    return PLACEHOLDER["email"]


_RULES: dict[Kind, tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]] = {
    "email": (_EMAIL, _email),
    "iban": (_IBAN, _iban),
    "card": (_CARD, _card),
    "phone": (_PHONE, _phone),
}


_WORTH_A_LOOK = re.compile(r"[\d@]")


class Redactor:
    """Replaces the configured kinds; ``redact`` returns the text and what it replaced."""

    def __init__(self, kinds: Iterable[Kind] = ALL_KINDS) -> None:
        wanted = set(kinds)
        # E-mail first (addresses hold digits), then IBAN before card (IBANs hold
        # digit runs), phones last.
        self._rules = [(kind, *_RULES[kind]) for kind in ALL_KINDS if kind in wanted]

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        counts: Counter[str] = Counter()
        if _WORTH_A_LOOK.search(text) is None:
            return text, counts
        for kind, pattern, replace in self._rules:
            text = pattern.sub(_counting(kind, replace, counts), text)
        return text, counts


def _counting(
    kind: Kind, replace: Callable[[re.Match[str]], str | None], counts: Counter[str]
) -> Callable[[re.Match[str]], str]:
    def sub(match: re.Match[str]) -> str:
        replacement = replace(match)
        if replacement is None:
            return match.group(0)
        counts[kind] += 1
        return replacement

    return sub
