"""JSON field access with the C SDK's rules (sdk/c/iotwasm.h), so that modules written in
every language read the same messages the same way.

`members(text)` walks the top-level members of one object and yields raw spans — the key as
written (without quotes, escapes not decoded) and the value as written — which is what
copying members into another document needs; nested values are skipped over, not parsed.
`parse_number` reads numbers as `iot_parse_double` does and `format_number` writes them as
`iot_buf_double` does (up to 6 decimals, trailing zeros trimmed).
"""

from __future__ import annotations

import re
from typing import Iterator

_WS = " \t\n\r"
_POW10 = [10.0 ** k for k in range(23)]
_WORD = re.compile(r"(infinity|inf|nan)", re.IGNORECASE)


class Malformed(ValueError):
    """The text is not a well-formed JSON object at this point."""


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _skip_string(s: str, i: int) -> int:
    n = len(s)
    i += 1
    while i < n:
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    return 0


def _skip_value(s: str, i: int) -> int:
    n = len(s)
    if i >= n:
        return 0
    if s[i] == '"':
        return _skip_string(s, i)
    if s[i] in "{[":
        depth = 0
        while i < n:
            c = s[i]
            if c == '"':
                i = _skip_string(s, i)
                if not i:
                    return 0
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return 0
    start = i
    while i < n and s[i] not in _WS and s[i] not in ",}]":
        i += 1
    return i if i > start else 0


def is_object(text: str) -> bool:
    """True when the text starts (after whitespace) with '{'."""
    i = _skip_ws(text, 0)
    return i < len(text) and text[i] == "{"


def members(text: str) -> Iterator[tuple[str, str]]:
    """(raw key, raw value) of each top-level member, in order; raises Malformed where the
    object stops being well-formed (members before that point have been yielded)."""
    s = text
    i = _skip_ws(s, 0)
    if i >= len(s) or s[i] != "{":
        raise Malformed("not a JSON object")
    i = _skip_ws(s, i + 1)
    if i < len(s) and s[i] == "}":
        return
    while True:
        if i >= len(s) or s[i] != '"':
            raise Malformed("expected a key")
        kend = _skip_string(s, i)
        if not kend:
            raise Malformed("unterminated key")
        key = s[i + 1:kend - 1]
        i = _skip_ws(s, kend)
        if i >= len(s) or s[i] != ":":
            raise Malformed("expected ':'")
        i = _skip_ws(s, i + 1)
        vend = _skip_value(s, i)
        if not vend:
            raise Malformed("bad value")
        yield key, s[i:vend]
        i = _skip_ws(s, vend)
        if i < len(s) and s[i] == "}":
            return
        if i >= len(s) or s[i] != ",":
            raise Malformed("expected ',' or '}'")
        i = _skip_ws(s, i + 1)


def parse_number(text: str) -> float | None:
    """The number `text` holds entirely, or None: JSON numbers, a leading '+', and inf,
    infinity, nan in any case (as Python's json writes Infinity and NaN)."""
    n = len(text)
    i = 0
    neg = False
    if i < n and text[i] in "+-":
        neg = text[i] == "-"
        i += 1
    if i < n and text[i] in "iInN":
        m = _WORD.match(text, i)
        if m is None or m.end() != n:
            return None
        v = float("nan") if m.group(1).lower() == "nan" else float("inf")
        return -v if neg else v
    mant = digits = exp10 = 0
    any_digit = False
    while i < n and "0" <= text[i] <= "9":
        any_digit = True
        if digits < 19:
            mant = mant * 10 + ord(text[i]) - 48
            if mant:
                digits += 1
        else:
            exp10 += 1
        i += 1
    if i < n and text[i] == ".":
        dot = i
        i += 1
        frac = False
        while i < n and "0" <= text[i] <= "9":
            frac = True
            if digits < 19:
                mant = mant * 10 + ord(text[i]) - 48
                if mant:
                    digits += 1
                exp10 -= 1
            i += 1
        if not frac:
            i = dot
        any_digit = any_digit or frac
    if not any_digit:
        return None
    if i < n and text[i] in "eE":
        j = i + 1
        eneg = False
        e = edigits = 0
        if j < n and text[j] in "+-":
            eneg = text[j] == "-"
            j += 1
        while j < n and "0" <= text[j] <= "9":
            if e < 100000:
                e = e * 10 + ord(text[j]) - 48
            j += 1
            edigits += 1
        if edigits:
            exp10 += -e if eneg else e
            i = j
    if i != n:
        return None
    v = float(mant)
    if mant:
        if exp10 > 0:
            while exp10 > 22 and v < 1e308:
                v *= 1e22
                exp10 -= 22
            v *= 1e22 if exp10 > 22 else _POW10[exp10]
        elif exp10 < 0:
            while exp10 < -22 and v > 0:
                v /= 1e22
                exp10 += 22
            v /= _POW10[22 if exp10 < -22 else -exp10]
    return -v if neg else v


def format_number(v: float) -> str:
    """Up to 6 decimals, trailing zeros trimmed, no "-0"; null for NaN and infinities."""
    if v != v or v - v != 0:
        return "null"
    neg = v < 0
    a = -v if neg else v
    if a < 1e13:
        scaled = int(a * 1e6 + 0.5)
        if scaled == 0:
            return "0"
        whole, frac = divmod(scaled, 1_000_000)
        text = str(whole)
        if frac:
            text += "." + f"{frac:06d}".rstrip("0")
        return ("-" if neg else "") + text
    if a < 1.8e19:
        return ("-" if neg else "") + str(int(a + 0.5))
    e = 0
    while a >= 1e16:
        a /= 1e16
        e += 16
    while a >= 10:
        a /= 10
        e += 1
    return ("-" if neg else "") + format_number(a) + f"e+{e}"
