"""The query text syntax and the Query invariants."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import EmptyQueryError, QuerySyntaxError
from core.query import Query, Term, parse_text_terms


def pairs(text: str) -> list[tuple[str, float]]:
    return [(t.payload, t.weight) for t in parse_text_terms(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red car", [("a red car", 1.0)]),
        ("cat + cartoon - photo", [("cat", 1.0), ("cartoon", 1.0), ("photo", -1.0)]),
        ("cat + 0.5*cartoon", [("cat", 1.0), ("cartoon", 0.5)]),
        ("sunset -2*people", [("sunset", 1.0), ("people", -2.0)]),
        ("sunset - 2 * people", [("sunset", 1.0), ("people", -2.0)]),
        ("sci-fi city", [("sci-fi city", 1.0)]),
        ('"rock - paper" + scissors', [("rock - paper", 1.0), ("scissors", 1.0)]),
        ("  +dog  ", [("dog", 1.0)]),
        ("1.5*castle", [("castle", 1.5)]),
    ],
)
def test_parse_terms(text, expected):
    assert pairs(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("+ -", EmptyQueryError),
        ("cat + - dog", QuerySyntaxError),
        ("cat +", QuerySyntaxError),
        ('"unclosed', QuerySyntaxError),
        ("cat + 11*dog", QuerySyntaxError),
        ("0.5*", QuerySyntaxError),
    ],
)
def test_parse_errors_are_user_errors(text, error):
    with pytest.raises(error) as info:
        parse_text_terms(text)
    assert str(info.value)  # a message the user can read


def test_limits_on_length_and_term_count():
    with pytest.raises(QuerySyntaxError, match="10000 characters"):
        parse_text_terms("x" * 10_000, max_chars=1000)
    with pytest.raises(QuerySyntaxError, match="17 terms"):
        parse_text_terms(" + ".join(["a"] * 17), max_terms=16)


def test_query_needs_a_positive_term():
    with pytest.raises(EmptyQueryError):
        Query(terms=())
    with pytest.raises(QuerySyntaxError, match="positive"):
        Query(terms=(Term("text", "photo", -1.0),))


def test_describe_round_trips_through_the_parser():
    query = Query(terms=tuple(parse_text_terms("cat + 0.5*cartoon - photo")))
    assert query.describe() == "cat + 0.5*cartoon - photo"
    assert pairs(query.describe()) == pairs("cat + 0.5*cartoon - photo")


@given(st.text(max_size=200))
def test_parser_never_fails_with_anything_but_a_user_error(text):
    try:
        terms = parse_text_terms(text)
    except (QuerySyntaxError, EmptyQueryError) as exc:
        assert str(exc)
        return
    for term in terms:
        assert term.payload.strip() == term.payload and term.payload
        assert -10 <= term.weight <= 10
