"""Message variants and spintax: which text a recipient gets, decided from a seed, without I/O.

A message is a string, or a list of variants `[{id: a, text: ...}, {id: b, text: ..., weight: 2}]`.
`pick(variants, seed)` draws one, weighted, from a hash of the seed (blake2b, not `hash()`, which
is salted per process): the same seed gives the same variant in every process and every release.

Spintax `{Hi|Hello|Hey}` in a text is resolved by `spin(text, seed)` on the template's source,
before Jinja renders it, so a recipient's values are never spun. The rules:
- Jinja's own tags (`{{ }}`, `{% %}`, `{# #}`, `{% raw %}...{% endraw %}`) are read as Jinja reads
  them and never split, so `{{ name|upper }}` or `{% if a|length %}` are not spintax.
- A group is a pair of braces outside those tags, with at least one `|` of its own. Options are
  taken as written (spaces included); an empty option is allowed (`{|, friend}`); an option may hold
  `{{ ... }}` and `{# ... #}` but not a `{% %}` tag (dropping half of an `if` would break the template).
- Nesting is refused: braces holding a `|` may not hold other braces. Braces without a `|`
  (`{note}`) and unmatched braces stay as they are; write `{{ '{a|b}' }}` for a literal group.
  Jinja reads `{{` first, so a first option cannot open with a tag: `{{{ name }}|there}` is a
  Jinja expression (a syntax error); write `{there|{{ name }}}`.
- Each group draws its option from a hash of (seed, its index), independently of `pick`; an option
  listed twice is twice as likely. No `{` of the text meets another `{`, `%` or `#` after spinning,
  so a spun template is valid Jinja whenever its source was.
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import accumulate, pairwise

from .errors import ConfigError

__all__ = ["Variant", "distinct_texts", "has_spintax", "parse_message", "pick", "spin", "spintax_choices"]

VARIANT_KEYS = ("id", "text", "weight")

# Jinja's default delimiters, as its lexer (jinja2/lexer.py) matches them.
_TAG_START = re.compile(r"\{[{%#]")
_RAW_BEGIN = re.compile(r"\{%[-+]?\s*raw\s*(?:-%\}\s*|%\})")
_RAW_END = re.compile(r"\{%[-+]?\s*endraw\s*(?:\+%\}|-%\}\s*|%\})")
_STRING = re.compile(r"""'([^'\\]*(?:\\.[^'\\]*)*)'|"([^"\\]*(?:\\.[^"\\]*)*)\"""", re.S)
_SPINTAX_CHARS = re.compile(r"[{|}]")


@dataclass(frozen=True)
class Variant:
    id: str
    text: str
    weight: float = 1.0


def parse_message(value: object, where: str) -> tuple[Variant, ...]:
    """A campaign's or a step's `message:` as variants: a string is one variant with id "".
    Raises ConfigError with one line starting with `where`."""
    if isinstance(value, str):
        _check_text(value, where)
        return (Variant("", value),)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a text or a list of variants, each with id and text")
    if not value:
        raise ConfigError(f"{where}: the list of variants is empty")
    variants: list[Variant] = []
    for index, item in enumerate(value):
        variants.append(_variant(item, f"{where}[{index}]", where))
        if any(earlier.id == variants[-1].id for earlier in variants[:-1]):
            raise ConfigError(f"{where}: variant id {variants[-1].id!r} is used twice")
    if not math.isfinite(sum(variant.weight for variant in variants)):
        raise ConfigError(f"{where}: the weights add up to more than a number can hold")
    return tuple(variants)


def _variant(item: object, place: str, where: str) -> Variant:
    if not isinstance(item, dict):
        raise ConfigError(f"{place}: a variant is a mapping with id and text, e.g. {{id: a, text: Hi}}")
    unknown = [key for key in item if key not in VARIANT_KEYS]
    if unknown:
        raise ConfigError(f"{place}: unknown key {unknown[0]!r} (a variant has id, text and weight)")
    for key in ("id", "text"):
        if key not in item:
            raise ConfigError(f"{place}: variant without {key}")
    name = item["id"]
    if not isinstance(name, str):
        raise ConfigError(f'{place}: id {name!r} is not text; quote it: id: "{name}"')
    if not name.strip():
        raise ConfigError(f"{place}: the id is empty")
    text = item["text"]
    label = f"variant {name!r}"
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {label} has text {text!r}; a text is a string")
    _check_text(text, f"{where}: {label}")
    weight = item.get("weight", 1.0)
    if isinstance(weight, int | float) and not isinstance(weight, bool) and not math.isfinite(weight):
        raise ConfigError(f"{where}: {label} has weight {weight!r}; a weight is a finite number above 0")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise ConfigError(f"{where}: {label} has weight {weight!r}; a weight is a number above 0")
    return Variant(name, text, float(weight))


def _check_text(text: str, prefix: str) -> None:
    if not text.strip():
        raise ConfigError(f"{prefix}: the text is empty")
    try:
        _parse(text)
    except ValueError as exc:
        raise ConfigError(f"{prefix}: {exc}") from None


def pick(variants: Sequence[Variant], seed: str) -> Variant:
    """The variant for `seed` (e.g. f"{campaign}\\x00{recipient}\\x00{step}"), drawn by weight."""
    if not variants:
        raise ValueError("pick needs at least one variant")
    if len(variants) == 1:
        return variants[0]
    bounds = list(accumulate(variant.weight for variant in variants))
    index = bisect_right(bounds, _uniform(b"variants.pick", seed) * bounds[-1])
    return variants[min(index, len(variants) - 1)]  # a rounding of the sum must not step past the end


def spin(text: str, seed: str) -> str:
    """`text` with each spintax group replaced by one of its options, chosen from (seed, group index).
    Raises ValueError for nested groups or a `{% %}` tag inside a group (parse_message reports both)."""
    parsed = _parse(text)
    if not parsed.groups:
        return text
    pieces = [parsed.literals[0]]
    for index, (options, literal) in enumerate(zip(parsed.groups, parsed.literals[1:], strict=True)):
        pieces.append(options[int(_uniform(b"variants.spin", f"{index}\x00{seed}") * len(options))])
        pieces.append(literal)
    return "".join(pieces)


def spintax_choices(text: str) -> int:
    """How many texts spinning can give: the product over groups of their distinct options. Two
    different draws that happen to spell the same text (`{a|ab}{bc|c}`) are counted apart."""
    return math.prod(len(set(options)) for options in _parse(text).groups)


def distinct_texts(variants: Sequence[Variant]) -> int:
    """How many texts a message can give before rendering: spintax choices summed over variants."""
    return sum(spintax_choices(variant.text) for variant in variants)


def has_spintax(text: str) -> bool:
    return bool(_parse(text).groups)


def _uniform(domain: bytes, seed: str) -> float:
    """A number in [0, 1) from a stable hash of `seed`; `domain` keeps pick and spin independent."""
    digest = hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8, person=domain).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53  # 53 bits: the division is exact, never 1.0


@dataclass(frozen=True)
class _Spintax:
    literals: tuple[str, ...]  # the text around the groups: one more than there are groups
    groups: tuple[tuple[str, ...], ...]  # each group's options, as written


@dataclass
class _Braces:
    start: int
    pipes: list[int] = field(default_factory=list)  # its own `|`, outside Jinja tags and inner braces
    holds_braces: bool = False
    holds_block: bool = False


@lru_cache(maxsize=256)  # one template, many recipients: read it once
def _parse(text: str) -> _Spintax:
    open_braces: list[_Braces] = []
    groups: list[tuple[int, int, tuple[str, ...]]] = []  # start, end, options
    position = 0
    while position < len(text):
        tag = _TAG_START.search(text, position)
        data_end = tag.start() if tag else len(text)
        for found in _SPINTAX_CHARS.finditer(text, position, data_end):
            char, at = found.group(), found.start()
            if char == "{":
                open_braces.append(_Braces(at))
            elif open_braces and char == "|":
                open_braces[-1].pipes.append(at)
            elif open_braces:  # "}"
                braces = open_braces.pop()
                if open_braces:
                    open_braces[-1].holds_braces = True
                if braces.pipes:
                    groups.append((braces.start, at + 1, _options(text, braces, at)))
        if tag is None:
            break
        position, block = _tag_end(text, tag.start())
        for braces in open_braces:
            braces.holds_block = braces.holds_block or block
    literals = []
    previous = 0
    for start, end, _ in groups:
        literals.append(text[previous:start])
        previous = end
    literals.append(text[previous:])
    return _Spintax(tuple(literals), tuple(options for _, _, options in groups))


def _options(text: str, braces: _Braces, close: int) -> tuple[str, ...]:
    written = text[braces.start : close + 1]
    if braces.holds_braces:
        raise ValueError(f"spintax groups cannot be nested or hold braces: {_excerpt(written)}")
    if braces.holds_block:
        raise ValueError(
            f"a spintax group cannot hold a {{% %}} tag: {_excerpt(written)}; put the group inside the tag instead"
        )
    bounds = [braces.start, *braces.pipes, close]
    return tuple(text[left + 1 : right] for left, right in pairwise(bounds))


def _tag_end(text: str, start: int) -> tuple[int, bool]:
    """Where the Jinja tag opening at `start` ends (the text's end if it never does, which Jinja
    refuses anyway), and whether it is a block (`{% %}` or raw) that no spintax option may hold."""
    opener = text[start : start + 2]
    if opener == "{#":
        end = text.find("#}", start + 2)
        return (end + 2 if end >= 0 else len(text)), False
    if opener == "{%" and (raw := _RAW_BEGIN.match(text, start)):
        end_raw = _RAW_END.search(text, raw.end())
        return (end_raw.end() if end_raw else len(text)), True
    closer = "}}" if opener == "{{" else "%}"
    depth = 0  # Jinja ends a tag only where its brackets balance: {{ {'a': {'b': 1}} }}
    position = start + 2
    while position < len(text):
        if depth == 0 and text.startswith(closer, position):
            return position + 2, opener == "{%"
        char = text[position]
        if char in "'\"" and (string := _STRING.match(text, position)):
            position = string.end()
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}" and depth:
            depth -= 1
        position += 1
    return len(text), opener == "{%"


def _excerpt(written: str, most: int = 60) -> str:
    return repr(written if len(written) <= most else written[: most - 1] + "…")
