from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import warnings
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from campaign_runner import variants as module
from campaign_runner.errors import ConfigError
from campaign_runner.variants import (
    Variant,
    distinct_texts,
    has_spintax,
    parse_message,
    pick,
    spin,
    spintax_choices,
)

ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)  # as config.make_environment
VALUES = {"first_name": "Ada", "x": "X", "note": "{a|b}", "items": ["p", "q"], "a": "abc"}
SEEDS = [f"spring\x00urn:li:fsd_profile:{i}\x000" for i in range(20_000)]


def render(source: str, values: dict[str, object] = VALUES) -> str:
    return ENV.from_string(source).render(values)


def texts_of(text: str, seeds: int = 400) -> set[str]:
    return {spin(text, str(seed)) for seed in range(seeds)}


# --- parsing ---------------------------------------------------------------------------------------


def test_a_string_is_one_variant_without_an_id() -> None:
    assert parse_message("Hi {{ first_name }}", "message") == (Variant("", "Hi {{ first_name }}", 1.0),)


def test_a_list_gives_its_variants_in_order_with_their_weights() -> None:
    found = parse_message(
        [
            {"id": "a", "text": "Hi"},
            {"id": "b", "text": "Hello", "weight": 2},
            {"id": "c", "text": "Hey", "weight": 0.5},
        ],
        "steps[2].message",
    )
    assert found == (Variant("a", "Hi"), Variant("b", "Hello", 2.0), Variant("c", "Hey", 0.5))
    assert all(isinstance(variant.weight, float) for variant in found)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "m: expected a text or a list of variants, each with id and text"),
        (5, "m: expected a text or a list of variants, each with id and text"),
        ({"id": "a", "text": "Hi"}, "m: expected a text or a list of variants, each with id and text"),
        ([], "m: the list of variants is empty"),
        ("", "m: the text is empty"),
        ("  \n", "m: the text is empty"),
        (["Hi"], "m[0]: a variant is a mapping with id and text, e.g. {id: a, text: Hi}"),
        ([{"id": "a", "text": "Hi", "wieght": 2}], "m[0]: unknown key 'wieght' (a variant has id, text and weight)"),
        ([{"text": "Hi"}], "m[0]: variant without id"),
        ([{"id": "a"}], "m[0]: variant without text"),
        ([{"id": 1, "text": "Hi"}], 'm[0]: id 1 is not text; quote it: id: "1"'),
        ([{"id": None, "text": "Hi"}], 'm[0]: id None is not text; quote it: id: "None"'),
        ([{"id": " ", "text": "Hi"}], "m[0]: the id is empty"),
        ([{"id": "a", "text": "Hi"}, {"id": "a", "text": "Yo"}], "m: variant id 'a' is used twice"),
        ([{"id": "b", "text": 3}], "m: variant 'b' has text 3; a text is a string"),
        ([{"id": "b", "text": ""}], "m: variant 'b': the text is empty"),
        ([{"id": "b", "text": "Hi", "weight": -1}], "m: variant 'b' has weight -1; a weight is a number above 0"),
        ([{"id": "b", "text": "Hi", "weight": 0}], "m: variant 'b' has weight 0; a weight is a number above 0"),
        ([{"id": "b", "text": "Hi", "weight": True}], "m: variant 'b' has weight True; a weight is a number above 0"),
        ([{"id": "b", "text": "Hi", "weight": "2"}], "m: variant 'b' has weight '2'; a weight is a number above 0"),
        ([{"id": "b", "text": "Hi", "weight": None}], "m: variant 'b' has weight None; a weight is a number above 0"),
        (
            [{"id": "b", "text": "Hi", "weight": math.inf}],
            "m: variant 'b' has weight inf; a weight is a finite number above 0",
        ),
        (
            [{"id": "b", "text": "Hi", "weight": math.nan}],
            "m: variant 'b' has weight nan; a weight is a finite number above 0",
        ),
        (
            [{"id": "a", "text": "Hi", "weight": 1e308}, {"id": "b", "text": "Yo", "weight": 1e308}],
            "m: the weights add up to more than a number can hold",
        ),
        ("{Hi|{Hello|Hey}}", "m: spintax groups cannot be nested or hold braces: '{Hi|{Hello|Hey}}'"),
        (
            [{"id": "b", "text": "x {Hi|Hello {x}}"}],
            "m: variant 'b': spintax groups cannot be nested or hold braces: '{Hi|Hello {x}}'",
        ),
        (
            "{Hi {% if x %}there{% endif %}|Hello}",
            "m: a spintax group cannot hold a {% %} tag: '{Hi {% if x %}there{% endif %}|Hello}';"
            " put the group inside the tag instead",
        ),
    ],
)
def test_each_bad_message_is_refused_with_one_line_naming_its_place(value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_message(value, "m")
    assert str(caught.value) == expected


def test_a_long_bad_group_is_shortened_in_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_message("{" + "word " * 40 + "|{a|b}}\n", "message")
    assert "\n" not in str(caught.value)
    assert str(caught.value) == "message: spintax groups cannot be nested or hold braces: '{" + "word " * 11 + "wor…'"


# --- pick ------------------------------------------------------------------------------------------

ABC = parse_message(
    [{"id": "a", "text": "A"}, {"id": "b", "text": "B", "weight": 2}, {"id": "c", "text": "C"}], "message"
)


def test_pick_gives_the_same_variant_for_the_same_seed() -> None:
    assert [pick(ABC, seed).id for seed in SEEDS[:500]] == [pick(ABC, seed).id for seed in SEEDS[:500]]


def test_pick_and_spin_are_pinned_so_no_release_reassigns_a_recipient() -> None:
    # A campaign resumed by a newer campaign-runner must draw what it drew before.
    assert "".join(pick(ABC, seed).id for seed in SEEDS[:12]) == "baacbcccbcbc"
    assert [spin("{a|b|c}{x|y}", seed) for seed in SEEDS[:8]] == ["cy", "cx", "cx", "ax", "ay", "ax", "cy", "ax"]


def test_pick_and_spin_do_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "import sys; from campaign_runner.variants import parse_message, pick, spin\n"
        "vs = parse_message([{'id': 'a', 'text': 'A'}, {'id': 'b', 'text': 'B', 'weight': 2}], 'm')\n"
        "seeds = [f'c\\x00{i}\\x000' for i in range(200)]\n"
        "print(''.join(pick(vs, s).id for s in seeds), ''.join(spin('{1|2|3}', s) for s in seeds))"
    )
    seeds = [f"c\x00{i}\x000" for i in range(200)]
    here = "".join(pick(ABC[:2], seed).id for seed in seeds) + " " + "".join(spin("{1|2|3}", s) for s in seeds)
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert there.stdout.strip() == here


def test_pick_splits_seeds_by_weight() -> None:
    two = parse_message([{"id": "a", "text": "A"}, {"id": "b", "text": "B", "weight": 2}], "m")
    shares = Counter(pick(two, seed).id for seed in SEEDS)
    assert abs(shares["a"] / len(SEEDS) - 1 / 3) < 0.02
    assert abs(shares["b"] / len(SEEDS) - 2 / 3) < 0.02
    shares = Counter(pick(ABC, seed).id for seed in SEEDS)
    for name, share in (("a", 0.25), ("b", 0.5), ("c", 0.25)):
        assert abs(shares[name] / len(SEEDS) - share) < 0.02


def test_pick_and_spin_draw_independently_from_one_seed() -> None:
    two = parse_message([{"id": "a", "text": "{1|2}"}, {"id": "b", "text": "{1|2}"}], "m")
    joint = Counter((pick(two, seed).id, spin("{1|2}", seed)) for seed in SEEDS)
    for pair in itertools.product("ab", "12"):
        assert abs(joint[pair] / len(SEEDS) - 0.25) < 0.02, joint


def test_one_variant_is_always_picked_and_none_is_a_mistake() -> None:
    only = parse_message("Hi", "m")
    assert {pick(only, seed) for seed in SEEDS[:100]} == {only[0]}
    with pytest.raises(ValueError):
        pick((), "seed")


# --- spintax ---------------------------------------------------------------------------------------


def test_spin_picks_one_option_per_group_the_same_for_the_same_seed() -> None:
    text = "{Hi|Hello|Hey} {{ first_name }}, {how are you|hope you are well}?"
    assert texts_of(text) == {
        f"{hello} {{{{ first_name }}}}, {how}?"
        for hello, how in itertools.product(("Hi", "Hello", "Hey"), ("how are you", "hope you are well"))
    }
    assert all(spin(text, seed) == spin(text, seed) for seed in SEEDS[:200])


def test_spin_draws_options_evenly_and_each_group_apart() -> None:
    counts = Counter(spin("{a|b|c}{a|b|c}", seed) for seed in SEEDS)
    first = Counter(text[0] for text in counts.elements())
    assert all(abs(first[option] / len(SEEDS) - 1 / 3) < 0.02 for option in "abc")
    assert all(abs(counts[a + b] / len(SEEDS) - 1 / 9) < 0.02 for a in "abc" for b in "abc")


@pytest.mark.parametrize(
    "source",
    [
        "Hi {{ first_name|upper }}",
        "Hi {{ first_name | default('a|b') }}",
        'Hi {{ first_name | replace("}", "|") }}',
        "{% if a|length %}long{% endif %}",
        "{%- if a | length > 1 -%} yes {%- endif %}",
        "{{ {'a|b': 1, 'c': {'d': 2}}['a|b'] }}",
        "{{ x }}{# {a|b} is not spintax in a comment #}",
        "{{- x -}}",
        "{% raw %}{a|b} {{ kept }}{% endraw %}",
        "{%- raw -%} {a|b} {%- endraw %}",
        "{% for i in items %}{{ i|upper }}{% if not loop.last %}|{% endif %}{% endfor %}",
        "{% set pair = {'x': 'a|b'} %}{{ pair.x }}",
        "a|b and {note} and } and { alone",
        "{{ note }}",
        "{|a",
    ],
)
def test_spin_never_touches_jinja_syntax_or_literal_braces(source: str) -> None:
    assert not has_spintax(source)
    assert spin(source, "seed") == source
    render(source)  # still a template


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ("{{ first_name }}{Hi|Hello}", {"AdaHi", "AdaHello"}),
        ("{Hi|Hello}{{ first_name }}", {"HiAda", "HelloAda"}),
        ("{Hi|}{{ first_name }}", {"HiAda", "Ada"}),
        ("{{ x }}{|}{{ x }}", {"XX"}),
        ("{Hi|Hello} {{ first_name|upper }}{# c #}{|!}", {"Hi ADA", "Hello ADA", "Hi ADA!", "Hello ADA!"}),
        ("{Hi {{ first_name }}|Hello {{ first_name|lower }}}!", {"Hi Ada!", "Hello ada!"}),
        ("{Hi|{{ first_name }}}", {"Hi", "Ada"}),
        ("{% if a|length %}{Hi|Hello}{% endif %}", {"Hi", "Hello"}),
        ("{{ x -}} {A|B} {%- if x %}!{% endif %}", {"XA!", "XB!"}),
        ("{note {Hi|Hello}}", {"{note Hi}", "{note Hello}"}),
        ("{ {a|b} }", {"{ a }", "{ b }"}),
        ("{|, friend}", {"", ", friend"}),
    ],
)
def test_spun_templates_still_render(source: str, rendered: set[str]) -> None:
    assert has_spintax(source)
    assert {render(text) for text in texts_of(source)} == rendered


def test_a_value_is_never_spun() -> None:
    source = "{Hi|Hello}, about {{ note }}"
    assert {render(text) for text in texts_of(source)} == {"Hi, about {a|b}", "Hello, about {a|b}"}


def test_jinja_reads_a_double_brace_first_so_a_first_option_cannot_open_with_a_tag() -> None:
    for source in ("{{{ first_name }}|there}", "{{{a|b}|c}", "{{# c #}|x}"):
        assert spin(source, "seed") == source
        with pytest.raises(TemplateSyntaxError):
            ENV.parse(source)  # so the campaign file is refused when its message is checked
    assert {render(text) for text in texts_of("{there|{{ first_name }}}")} == {"there", "Ada"}


def test_nesting_and_blocks_in_a_group_are_refused() -> None:
    for text in ("{a|{b|c}}", "{a {b}|c}", "{a|b {% if x %}c{% endif %}}", "{a|{% raw %}b{% endraw %}}"):
        with pytest.raises(ValueError):
            spin(text, "seed")


@pytest.mark.parametrize(
    ("text", "choices"),
    [
        ("no groups", 1),
        ("{note} {{ a|b }}", 1),
        ("{a|b}", 2),
        ("{a|b} {c|d|e}", 6),
        ("{a|a|b}", 2),
        ("{|}", 1),
        ("{|, friend}", 2),
        ("{Hi|Hi }", 2),
    ],
)
def test_choices_count_distinct_options_per_group(text: str, choices: int) -> None:
    assert spintax_choices(text) == choices
    assert len(texts_of(text)) == choices


def test_distinct_texts_sums_over_variants() -> None:
    message = parse_message([{"id": "a", "text": "{Hi|Hello} there"}, {"id": "b", "text": "{A|B|C}{x|y}"}], "m")
    assert distinct_texts(message) == 8
    assert distinct_texts(parse_message("plain", "m")) == 1


def test_an_option_listed_twice_is_twice_as_likely() -> None:
    shares = Counter(spin("{a|a|b}", seed) for seed in SEEDS)
    assert abs(shares["a"] / len(SEEDS) - 2 / 3) < 0.02


def test_the_module_exports_its_api() -> None:
    assert set(module.__all__) == {
        "Variant",
        "parse_message",
        "pick",
        "spin",
        "spintax_choices",
        "distinct_texts",
        "has_spintax",
    }


# --- properties ------------------------------------------------------------------------------------

WORDS = st.sampled_from(["Hi", "there", " ", ", ", "!", "a|b", "}", "{note}", "\n"])
JINJA = st.sampled_from(
    [
        "{{ first_name }}",
        "{{ first_name|upper }}",
        "{{ x | default('{a|b}') }}",
        "{# {a|b} #}",
        "{% if a|length %}yes{% endif %}",
        "{% raw %}{a|b}{% endraw %}",
        "{{ {'k': 'a|b'}['k'] }}",
        "{{- x -}}",
        "{{ note }}",
    ]
)
OPTIONS = st.lists(
    st.sampled_from(["", "Hi", "Hello", " friend", "{{ first_name }}", "Dear {{ x|lower }}", "{# c #}"]),
    min_size=2,
    max_size=3,
).map(lambda options: options if not options[0].startswith("{") else ["", *options])  # `{{{` opens a Jinja tag


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.one_of(WORDS, JINJA, OPTIONS), max_size=6), seed=st.text(max_size=20))
def test_spin_only_chooses_among_the_groups_options_and_the_result_renders(pieces: list, seed: str) -> None:
    source = "".join(piece if isinstance(piece, str) else "{" + "|".join(piece) + "}" for piece in pieces)
    expected = {
        "".join(itertools.chain.from_iterable(zip(literals, (*choice, ""), strict=True)))
        for literals in [_literals(pieces)]
        for choice in itertools.product(*(piece for piece in pieces if isinstance(piece, list)))
    }
    spun = spin(source, seed)
    assert spun in expected
    assert spun == spin(source, seed)
    render(spun)
    assert spintax_choices(source) == math.prod(len(set(piece)) for piece in pieces if isinstance(piece, list))


def _literals(pieces: list) -> list[str]:
    """The text between the groups of a generated template."""
    literals = [""]
    for piece in pieces:
        if isinstance(piece, str):
            literals[-1] += piece
        else:
            literals.append("")
    return literals


SOUP = st.lists(
    st.sampled_from(["{", "}", "|", "%", "#", "-", "+", "'", '"', "\\", " ", "x", "raw", "endraw", "(", "]"]),
    max_size=30,
).map("".join)


@settings(max_examples=2000, deadline=None)
@given(source=SOUP, seed=st.text(max_size=5))
def test_a_spun_template_is_valid_jinja_whenever_its_source_is(source: str, seed: str) -> None:
    try:
        with warnings.catch_warnings():  # Jinja warns of a string's unknown escape such as "\]"
            warnings.simplefilter("ignore", DeprecationWarning)
            ENV.parse(source)
    except TemplateSyntaxError:
        return
    try:
        spun = spin(source, seed)
    except ValueError:
        return  # nested groups, reported when the campaign is loaded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ENV.parse(spun)
