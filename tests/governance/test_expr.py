"""The condition language: every operator, odd data never raises, malformed expressions give
the position of the problem."""

from __future__ import annotations

import pytest

from proxy.governance.expr import MAX_DEPTH, ExpressionError, compile_expression, parse_path

EVENT = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u-1",
    "context": {"library": {"name": "analytics-python", "version": "2.3.0"}, "ip": "10.0.0.1",
                "page": {"url": "https://www.example.com/checkout?step=2"}},
    "properties": {"revenue": 12.5, "quantity": 3, "currency": "USD", "tags": ["sale", "new"],
                   "internal": False, "coupon": None, "order id": "o-9", "zero": 0, "flag": True,
                   "products": [{"sku": "A1", "price": 2}], "note": "héllo wörld"},
}


def ev(text: str, event: dict = EVENT) -> bool:
    return compile_expression(text)(event)


@pytest.mark.parametrize("text,expected", [
    # ==, != with every literal kind
    ('event == "Order Completed"', True),
    ("event == 'Order Completed'", True),
    ('event != "Order Completed"', False),
    ('"Order Completed" == event', True),
    ("properties.quantity == 3", True),
    ("properties.quantity == 3.0", True),
    ("properties.revenue == 12.5", True),
    ("properties.flag == true", True),
    ("properties.flag == 1", False),           # booleans are not numbers
    ("properties.zero == false", False),
    ("properties.coupon == null", True),
    ("properties.missing == null", True),      # a missing field reads as null
    ("properties.missing != null", False),
    ('properties.tags == ["sale", "new"]', True),
    ("properties.quantity == properties.zero", False),
    ("properties.quantity != properties.zero", True),
    # in / not in
    ('type in ["track", "identify"]', True),
    ('type in ["page"]', False),
    ('type not in ["page"]', True),
    ("properties.quantity in [1, 2, 3]", True),
    ("properties.flag in [1]", False),
    ("properties.flag in [true]", True),
    ("properties.coupon in [null]", True),
    ("properties.tags in [1]", False),          # a list is never a member
    ('"sale" in properties.tags', True),
    ('"Order" in event', True),                 # substring of a field
    ("properties.quantity in properties.tags", False),
    ("type in []", False),
    # exists
    ("context.ip exists", True),
    ("properties.coupon exists", False),        # null does not exist
    ("context.nothing.deeper exists", False),
    ("not traits exists", True),
    # contains / startswith / endswith
    ('properties.tags contains "sale"', True),
    ('properties.tags contains "old"', False),
    ('context.library.name contains "python"', True),
    ("properties.quantity contains 3", False),
    ('context.library.name startswith "analytics-"', True),
    ('context.library.name startswith "test-"', False),
    ('context.library.name endswith "python"', True),
    ('properties.quantity startswith "3"', False),
    ("event startswith event", True),
    # matches (RE2)
    (r'context.page.url matches "^https://(www\\.)?example\\.com/checkout"', True),
    ('context.library.name matches "^analytics-(js|node)$"', False),
    ('properties.note matches "w.rld"', True),    # . is one character, also outside ASCII
    ('properties.quantity matches "3"', False),
    ('event matches "(?i)order completed"', True),
    # numeric comparisons
    ("properties.revenue > 10", True),
    ("properties.revenue >= 12.5", True),
    ("properties.revenue < 12.5", False),
    ("properties.revenue <= 12.5", True),
    ("properties.quantity < -1", False),
    ("properties.currency > 1", False),         # a string is not a number
    ("properties.flag > 0", False),             # nor is a boolean
    ("properties.missing < 5", False),
    ("properties.quantity < properties.revenue", True),
    ("1.5e1 > properties.revenue", True),
    # and / or / not / parentheses / truthiness
    ('event == "Debug" or context.library.name startswith "analytics"', True),
    ('event == "Order Completed" and properties.revenue > 100', False),
    ('not event == "Debug"', True),
    ('not (type == "track" and properties.revenue > 10)', False),
    ('(type == "page" or type == "track") and (properties.currency == "USD")', True),
    ('type == "page" or type == "screen" or properties.quantity == 3', True),
    ('type == "track" and properties.quantity == 3 and not properties.internal', True),
    ("properties.internal", False),
    ("properties.flag", True),
    ("not properties.missing", True),
    ("true", True),
    ("not false", True),
    ("(properties.flag)", True),
    ("(properties.quantity > 2) == true", True),
    # paths: backticks, list indexes, keyword-looking segments
    ('properties.`order id` == "o-9"', True),
    ('properties.products.0.sku == "A1"', True),
    ("properties.products.5.sku exists", False),
    ("properties.products.sku exists", False),
    ("context.library.in exists", False),
])
def test_operators(text, expected):
    assert ev(text) is expected


def test_odd_events_never_raise():
    exprs = ['properties.revenue > 10', 'properties.tags contains "x"', 'context.library.name startswith "t"',
             'properties.a.b.c == 1', 'type in ["track"]', 'properties.x matches "a+"', '"a" in properties.x',
             'properties.x contains properties.y', "properties.x in properties.y"]
    odd = [{}, {"properties": None}, {"properties": [1, 2]}, {"properties": "str"}, {"context": {"library": 5}},
           {"properties": {"a": {"b": [1]}, "x": {"k": 1}, "y": [{"k": 1}], "revenue": [1]}}, {"type": {"a": 1}}]
    for text in exprs:
        fn = compile_expression(text)
        for e in odd:
            assert fn(e) in (True, False)


def test_matches_is_linear_time():
    # exponential for a backtracking engine (Python's re needs ages for 30 characters)
    fn = compile_expression('properties.s matches "(a+)+$"')
    assert fn({"properties": {"s": "a" * 100_000 + "b"}}) is False
    assert fn({"properties": {"s": "a" * 10}}) is True


def test_compiled_once():
    assert compile_expression('event == "x"') is compile_expression('event == "x"')


@pytest.mark.parametrize("text,column,fragment", [
    ('event = "x"', 7, "use '=='"),
    ("event == ", 10, "found the end of the expression"),
    ('(event == "a"', 14, "expected ')' to close the '(' at column 1"),
    ('event == "a" foo', 14, "expected 'and', 'or' or the end"),
    ('event == "a" and', 17, "expected a field or a value"),
    ('"abc', 1, "unterminated string"),
    ("event == 'abc", 10, "unterminated string"),
    ('properties.x > "a"', 16, "'>' compares numbers"),
    ("properties.x > [1]", 16, "'>' compares numbers"),
    ('event matches "("', 15, "invalid regular expression"),
    ("event matches properties.re", 15, "regular expression in a string literal"),
    ('type in "track"', 9, "'in' expects a list"),
    ("event startswith 5", 18, "'startswith' expects a string"),
    ('"x" exists', 5, "'exists' applies to a field"),
    ("a && b", 3, "use 'and'"),
    ("a || b", 3, "use 'or'"),
    ("!a", 1, "use 'not'"),
    ("", 1, "empty expression"),
    ("a == [1, b]", 10, "a list holds only"),
    ("a == [1 2]", 9, "expected ',' or ']'"),
    ("a == 12abc", 8, "after the number"),
    ("a.", 3, "expected a field name after '.'"),
    ("a.`", 3, "unterminated `quoted`"),
    ("a == #", 6, "unexpected character '#'"),
    ("and", 1, "expected a field or a value"),
    ("a == b == c", 8, "expected 'and', 'or'"),
])
def test_malformed_expressions_give_the_position(text, column, fragment):
    with pytest.raises(ExpressionError) as err:
        compile_expression(text)
    assert err.value.column == column, str(err.value)
    assert fragment in err.value.message, str(err.value)
    assert f"(column {column})" in str(err.value)
    assert err.value.pointer().splitlines()[1] == " " * (column - 1) + "^"


def test_limits():
    with pytest.raises(ExpressionError, match="nested more than"):
        compile_expression("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError, match="nested more than"):
        compile_expression("not " * (MAX_DEPTH + 1) + "a")
    with pytest.raises(ExpressionError, match="longer than"):
        compile_expression("a == " + '"' + "x" * 5000 + '"')
    with pytest.raises(ExpressionError, match="regular expression longer"):
        compile_expression('a matches "' + "x" * 1001 + '"')


def test_string_escapes():
    assert compile_expression(r'a == "\d\."')({"a": "\\d\\."})
    assert compile_expression(r'a matches "^\d+\.\d+$"')({"a": "12.5"})
    assert not compile_expression(r'a matches "^\d+\.\d+$"')({"a": "12x5"})
    assert ev('properties.note == "h\\u00e9llo w\\u00f6rld"')
    assert compile_expression(r'a == "q\"uote\\"')({"a": 'q"uote\\'})
    assert compile_expression("a == 'it\\'s'")({"a": "it's"})


def test_parse_path():
    assert parse_path("properties.email") == ("properties", "email")
    assert parse_path("properties.`order id`") == ("properties", "order id")
    assert parse_path("type") == ("type",)
    for bad in ("properties.", "a b", "", "a == b"):
        with pytest.raises(ExpressionError):
            parse_path(bad)

