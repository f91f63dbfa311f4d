r"""Condition expressions for destination filters: a small language of our own, parsed once and
compiled to closures (never Python ``eval``).

    event == "Debug" or context.library.name startswith "test-"
    type in ["track", "identify"] and not properties.internal
    properties.revenue >= 100 and properties.currency != "EUR"
    context.page.url matches "^https://(www\.)?example\.com/checkout"

Operands are field paths (``context.library.name``; a key that is no identifier goes in
backticks: ``properties.`order id```), and literals: strings in single or double quotes, numbers,
``true``, ``false``, ``null`` and lists of literals. Strings know the escapes \\ \' \" \n \t
\r \/ \uXXXX; any other backslash is kept as written (so ``"^\d+\.\d+$"`` is the regular
expression it looks like). A missing field reads as ``null``.
Comparisons never raise on odd data: a comparison whose operands have the wrong types is false
(``properties.revenue > 10`` when revenue is a string), ``1 == true`` is false (booleans are not
numbers), and ``!=`` is the negation of ``==``.

``matches`` uses RE2 (google-re2): matching time is linear in the input, so no pattern and no
event can stall the delivery worker (Python's ``re`` backtracks exponentially on patterns such as
``(a+)+$``). Patterns are compiled once, at config load, and limited to MAX_PATTERN characters.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_EXPRESSION = 4096
MAX_DEPTH = 64
MAX_PATTERN = 1000

KEYWORDS = frozenset({"and", "or", "not", "in", "exists", "contains", "startswith", "endswith", "matches",
                      "true", "false", "null"})
_BINARY_WORDS = ("in", "contains", "startswith", "endswith", "matches")
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")

_WS = re.compile(r"\s+")
_NUM = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_SEGMENT = re.compile(r"[A-Za-z0-9_$]+")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r", "/": "/"}

Getter = Callable[[dict], Any]
Predicate = Callable[[dict], bool]


class ExpressionError(ValueError):
    """A malformed expression; ``position`` is 0-based, ``column`` 1-based."""

    def __init__(self, message: str, position: int, text: str) -> None:
        self.message = message
        self.position = position
        self.text = text
        super().__init__(f"{message} (column {position + 1})")

    @property
    def column(self) -> int:
        return self.position + 1

    def pointer(self) -> str:
        """The expression with a caret under the problem (for terminals)."""
        return f"{self.text}\n{' ' * self.position}^"


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # str num path kw op ( ) [ ] , end
    value: Any
    pos: int


def _scan_string(text: str, i: int) -> tuple[str, int]:
    quote = text[i]
    out: list[str] = []
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == quote:
            return "".join(out), j + 1
        if c == "\\":
            if j + 1 >= len(text):
                break
            e = text[j + 1]
            if e == "u":
                digits = text[j + 2:j + 6]
                if len(digits) != 4 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise ExpressionError("\\u needs four hex digits", j, text)
                out.append(chr(int(digits, 16)))
                j += 6
                continue
            # any other backslash stays as written, so regular expressions read naturally: "\d+\."
            out.append(_ESCAPES.get(e, "\\" + e))
            j += 2
            continue
        out.append(c)
        j += 1
    raise ExpressionError("unterminated string", i, text)


def _scan_segment(text: str, i: int, first: bool) -> tuple[str, int, bool]:
    """One path segment at i: (name, end, was_quoted)."""
    if i < len(text) and text[i] == "`":
        end = text.find("`", i + 1)
        if end < 0:
            raise ExpressionError("unterminated `quoted` field name", i, text)
        if end == i + 1:
            raise ExpressionError("empty field name", i, text)
        return text[i + 1:end], end + 1, True
    m = (_IDENT if first else _SEGMENT).match(text, i)
    if not m:
        raise ExpressionError("expected a field name after '.'", i, text)
    return m.group(), m.end(), False


def tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while True:
        m = _WS.match(text, i)
        if m:
            i = m.end()
        if i >= n:
            toks.append(_Tok("end", None, i))
            return toks
        c = text[i]
        two = text[i:i + 2]
        if c in "\"'":
            value, j = _scan_string(text, i)
            toks.append(_Tok("str", value, i))
        elif two in ("==", "!=", "<=", ">="):
            toks.append(_Tok("op", two, i))
            j = i + 2
        elif c in "<>":
            toks.append(_Tok("op", c, i))
            j = i + 1
        elif c in "()[],":
            toks.append(_Tok(c, c, i))
            j = i + 1
        elif two == "&&":
            raise ExpressionError("use 'and' instead of '&&'", i, text)
        elif two == "||":
            raise ExpressionError("use 'or' instead of '||'", i, text)
        elif c == "=":
            raise ExpressionError("use '==' to compare", i, text)
        elif c == "!":
            raise ExpressionError("use 'not' instead of '!'", i, text)
        elif (m := _NUM.match(text, i)) and (c != "-" or m.end() > i + 1):
            raw = m.group()
            j = m.end()
            if j < n and (text[j].isalnum() or text[j] in "_$`."):
                raise ExpressionError(f"unexpected character {text[j]!r} after the number {raw}", j, text)
            number: Any = float(raw) if any(x in raw for x in ".eE") else int(raw)
            toks.append(_Tok("num", number, i))
        elif c == "`" or _IDENT.match(text, i):
            segments: list[str] = []
            name, j, quoted = _scan_segment(text, i, True)
            segments.append(name)
            while j < n and text[j] == ".":
                name, j, _ = _scan_segment(text, j + 1, False)
                segments.append(name)
            if len(segments) == 1 and not quoted and segments[0] in KEYWORDS:
                toks.append(_Tok("kw", segments[0], i))
            else:
                toks.append(_Tok("path", tuple(segments), i))
        else:
            raise ExpressionError(f"unexpected character {c!r}", i, text)
        i = j


# --- syntax tree: tuples (kind, pos, ...) -------------------------------------------------------
# ("lit", pos, value) ("list", pos, tuple) ("path", pos, segments) ("group", pos, node)
# ("and"|"or", pos, [nodes]) ("not", pos, node) ("cmp", pos, op, left, right)
# ("exists", pos, path) ("truthy", pos, operand)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: _Tok | None = None) -> ExpressionError:
        return ExpressionError(message, (tok or self.peek()).pos, self.text)

    def is_kw(self, word: str, offset: int = 0) -> bool:
        tok = self.toks[min(self.i + offset, len(self.toks) - 1)]
        return tok.kind == "kw" and tok.value == word

    def parse(self) -> tuple:
        if self.peek().kind == "end":
            raise self.error("empty expression")
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end of the expression, found {_describe(tok)}")
        return node

    def _nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested more than {MAX_DEPTH} levels deep", tok)

    def parse_or(self) -> tuple:
        first = self.peek()
        items = [self.parse_and()]
        while self.is_kw("or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else ("or", first.pos, items)

    def parse_and(self) -> tuple:
        first = self.peek()
        items = [self.parse_not()]
        while self.is_kw("and"):
            self.take()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else ("and", first.pos, items)

    def parse_not(self) -> tuple:
        if self.is_kw("not"):
            tok = self.take()
            self._nest(tok)
            node = ("not", tok.pos, self.parse_not())
            self.depth -= 1
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> tuple:
        left = self.parse_operand()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            return ("cmp", tok.pos, tok.value, left, self.parse_operand())
        if tok.kind == "kw" and tok.value in _BINARY_WORDS:
            self.take()
            return ("cmp", tok.pos, tok.value, left, self.parse_operand())
        if self.is_kw("not") and self.is_kw("in", 1):
            self.take()
            self.take()
            return ("not", tok.pos, ("cmp", tok.pos, "in", left, self.parse_operand()))
        if self.is_kw("exists"):
            self.take()
            if left[0] != "path":
                raise self.error("'exists' applies to a field, such as context.ip exists", tok)
            return ("exists", tok.pos, left)
        return ("truthy", left[1], left)

    def parse_operand(self) -> tuple:
        tok = self.peek()
        if tok.kind in ("str", "num"):
            self.take()
            return ("lit", tok.pos, tok.value)
        if tok.kind == "kw" and tok.value in ("true", "false", "null"):
            self.take()
            return ("lit", tok.pos, {"true": True, "false": False, "null": None}[tok.value])
        if tok.kind == "path":
            self.take()
            return ("path", tok.pos, tok.value)
        if tok.kind == "[":
            return self.parse_list()
        if tok.kind == "(":
            self.take()
            self._nest(tok)
            node = self.parse_or()
            self.depth -= 1
            close = self.peek()
            if close.kind != ")":
                raise self.error(f"expected ')' to close the '(' at column {tok.pos + 1}, found {_describe(close)}")
            self.take()
            return ("group", tok.pos, node)
        if tok.kind == "end":
            raise self.error("expected a field or a value, found the end of the expression")
        raise self.error(f"expected a field or a value, found {_describe(tok)}")

    def parse_list(self) -> tuple:
        start = self.take()
        items: list[Any] = []
        while True:
            tok = self.peek()
            if tok.kind == "]" and not items:
                self.take()
                break
            if tok.kind in ("str", "num"):
                items.append(tok.value)
            elif tok.kind == "kw" and tok.value in ("true", "false", "null"):
                items.append({"true": True, "false": False, "null": None}[tok.value])
            else:
                raise self.error(f"a list holds only strings, numbers, true, false or null; found {_describe(tok)}")
            self.take()
            sep = self.take()
            if sep.kind == "]":
                break
            if sep.kind != ",":
                raise self.error(f"expected ',' or ']' in the list that opens at column {start.pos + 1}", sep)
        return ("list", start.pos, tuple(items))


def _describe(tok: _Tok) -> str:
    if tok.kind == "end":
        return "the end of the expression"
    if tok.kind == "str":
        return f"the string {tok.value!r}"
    if tok.kind == "num":
        return f"the number {tok.value}"
    if tok.kind == "path":
        return f"the field {'.'.join(tok.value)}"
    return f"'{tok.value}'"


# --- compilation to closures --------------------------------------------------------------------


def path_getter(segments: tuple[str, ...]) -> Getter:
    """A getter for a dotted path through objects; a numeric segment also indexes a list."""
    if all(not s.isdigit() for s in segments):
        if len(segments) == 1:  # a top-level field: C-level e.get(name), no Python frame
            return operator.methodcaller("get", segments[0])
        if len(segments) == 2:
            a, b = segments

            def get2(e: dict) -> Any:
                v = e.get(a)
                return v.get(b) if v.__class__ is dict else None
            return get2
        if len(segments) == 3:
            a, b, c = segments

            def get3(e: dict) -> Any:
                v = e.get(a)
                if v.__class__ is not dict:
                    return None
                v = v.get(b)
                return v.get(c) if v.__class__ is dict else None
            return get3

    def get(e: dict) -> Any:
        v: Any = e
        for s in segments:
            if v.__class__ is dict:
                v = v.get(s)
            elif v.__class__ is list and s.isdigit() and int(s) < len(v):
                v = v[int(s)]
            else:
                return None
        return v
    return get


def _strict_eq(a: Any, b: Any) -> bool:
    if a.__class__ is bool or b.__class__ is bool:
        return a is b
    return a == b


def _is_number(v: Any) -> bool:
    return v.__class__ is int or v.__class__ is float


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, pos: int) -> ExpressionError:
        return ExpressionError(message, pos, self.text)

    def predicate(self, node: tuple) -> Predicate:
        kind = node[0]
        if kind in ("and", "or"):
            parts = [self.predicate(n) for n in node[2]]
            if kind == "and":
                if len(parts) == 2:
                    p, q = parts
                    return lambda e: p(e) and q(e)

                def all_of(e: dict) -> bool:
                    for p in parts:
                        if not p(e):
                            return False
                    return True
                return all_of
            if len(parts) == 2:
                p, q = parts
                return lambda e: p(e) or q(e)

            def any_of(e: dict) -> bool:
                for p in parts:
                    if p(e):
                        return True
                return False
            return any_of
        if kind == "not":
            p = self.predicate(node[2])
            return lambda e: not p(e)
        if kind == "exists":
            get = path_getter(node[2][2])
            return lambda e: get(e) is not None
        if kind == "truthy":
            operand = node[2]
            if operand[0] == "group":
                return self.predicate(operand[2])
            if operand[0] in ("lit", "list"):
                value = bool(operand[2])
                return lambda e: value
            get = path_getter(operand[2])
            return lambda e: bool(get(e))
        if kind == "cmp":
            return self.comparison(node)
        raise AssertionError(kind)

    def operand(self, node: tuple) -> Getter:
        kind = node[0]
        if kind == "path":
            return path_getter(node[2])
        if kind == "group":
            return self.predicate(node[2])
        value = node[2] if kind == "lit" else list(node[2])
        return lambda e: value

    def comparison(self, node: tuple) -> Predicate:
        _, pos, op, left, right = node
        if op in ("==", "!="):
            if left[0] in ("lit", "list") and right[0] not in ("lit", "list"):
                left, right = right, left
            p = self._equals(left, right)
            if op == "!=":
                return lambda e: not p(e)
            return p
        if op in ("<", "<=", ">", ">="):
            return self._order(op, pos, left, right)
        if op == "in":
            return self._in(pos, left, right)
        if op == "contains":
            return self._contains(left, right)
        if op in ("startswith", "endswith"):
            return self._affix(op, pos, left, right)
        if op == "matches":
            return self._matches(pos, left, right)
        raise AssertionError(op)

    def _equals(self, left: tuple, right: tuple) -> Predicate:
        get = self.operand(left)
        if right[0] == "lit":
            lit = right[2]
            if lit is None or lit.__class__ is bool:
                return lambda e: get(e) is lit
            if lit.__class__ is str:
                return lambda e: get(e) == lit
            return lambda e: (v := get(e)).__class__ is not bool and v == lit
        other = self.operand(right)
        return lambda e: _strict_eq(get(e), other(e))

    def _order(self, op: str, pos: int, left: tuple, right: tuple) -> Predicate:
        for side in (left, right):
            if side[0] == "list" or (side[0] == "lit" and not _is_number(side[2])):
                raise self.error(f"'{op}' compares numbers; {_literal(side)} is not a number", side[1])
        a, b = self.operand(left), self.operand(right)
        cmp = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
        if right[0] == "lit":
            lit = right[2]
            return lambda e: _is_number(v := a(e)) and cmp(v, lit)

        def order(e: dict) -> bool:
            x, y = a(e), b(e)
            return _is_number(x) and _is_number(y) and cmp(x, y)
        return order

    def _in(self, pos: int, left: tuple, right: tuple) -> Predicate:
        get = self.operand(left)
        if right[0] == "list":
            strs = frozenset(v for v in right[2] if v.__class__ is str)
            nums = frozenset(v for v in right[2] if _is_number(v))
            bools = frozenset(v for v in right[2] if v.__class__ is bool)
            has_null = None in right[2]

            def member(e: dict) -> bool:
                v = get(e)
                c = v.__class__
                if c is str:
                    return v in strs
                if v is None:
                    return has_null
                if c is bool:
                    return v in bools
                if c is int or c is float:
                    return v in nums
                return False
            return member
        if right[0] == "lit":
            raise self.error(f"'in' expects a list such as [\"a\", \"b\"] or a field; found {_literal(right)}",
                             right[1])
        container = self.operand(right)

        def member_of_field(e: dict) -> bool:
            v, c = get(e), container(e)
            if c.__class__ is list:
                return any(_strict_eq(v, x) for x in c)
            if c.__class__ is str and v.__class__ is str:
                return v in c
            return False
        return member_of_field

    def _contains(self, left: tuple, right: tuple) -> Predicate:
        get, item = self.operand(left), self.operand(right)

        def contains(e: dict) -> bool:
            v, x = get(e), item(e)
            if v.__class__ is str:
                return x.__class__ is str and x in v
            if v.__class__ is list:
                return any(_strict_eq(x, y) for y in v)
            return False
        return contains

    def _affix(self, op: str, pos: int, left: tuple, right: tuple) -> Predicate:
        if right[0] == "list" or (right[0] == "lit" and right[2].__class__ is not str):
            raise self.error(f"'{op}' expects a string; found {_literal(right)}", right[1])
        get, other = self.operand(left), self.operand(right)
        if right[0] == "lit":
            lit = right[2]
            if op == "startswith":
                return lambda e: (v := get(e)).__class__ is str and v.startswith(lit)
            return lambda e: (v := get(e)).__class__ is str and v.endswith(lit)

        def affix(e: dict) -> bool:
            v, x = get(e), other(e)
            if v.__class__ is not str or x.__class__ is not str:
                return False
            return v.startswith(x) if op == "startswith" else v.endswith(x)
        return affix

    def _matches(self, pos: int, left: tuple, right: tuple) -> Predicate:
        if right[0] != "lit" or right[2].__class__ is not str:
            raise self.error("'matches' expects a regular expression in a string literal", right[1])
        pattern = right[2]
        if len(pattern) > MAX_PATTERN:
            raise self.error(f"regular expression longer than {MAX_PATTERN} characters", right[1])
        search = compile_regex(pattern, lambda msg: self.error(f"invalid regular expression: {msg}", right[1]))
        get = self.operand(left)
        return lambda e: (v := get(e)).__class__ is str and search(v)


def compile_regex(pattern: str, on_error: Callable[[str], Exception]) -> Callable[[str], bool]:
    """RE2 search as a boolean function of a str (text is matched as UTF-8 bytes: the str API of
    google-re2 maps byte offsets back to characters on every call, which costs more than the match)."""
    import re2

    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.max_mem = 8 << 20
    try:
        compiled = re2.compile(pattern.encode(), options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise on_error(str(detail)) from None
    raw_search = compiled.search
    return lambda text: raw_search(text.encode("utf-8", "surrogatepass")) is not None


def _literal(node: tuple) -> str:
    if node[0] == "list":
        return "a list"
    v = node[2]
    if v is None:
        return "null"
    if v.__class__ is bool:
        return "true" if v else "false"
    return repr(v) if isinstance(v, str) else str(v)


class Expression:
    """A compiled condition: ``expr(event) -> bool``; ``text`` is the source."""

    __slots__ = ("text", "_fn")

    def __init__(self, text: str, fn: Predicate) -> None:
        self.text = text
        self._fn = fn

    def __call__(self, event: dict) -> bool:
        return bool(self._fn(event))

    @property
    def fn(self) -> Predicate:
        """The bare closure (returns a truthy value), for callers on the hot path."""
        return self._fn

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@lru_cache(maxsize=1024)
def compile_expression(text: str) -> Expression:
    """Parse and compile; raises ExpressionError with the position of the problem."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", 0, str(text))
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION} characters", MAX_EXPRESSION, text)
    tree = _Parser(text).parse()
    return Expression(text, _Compiler(text).predicate(tree))


def parse_path(text: str) -> tuple[str, ...]:
    """A field path as written in filters (``properties.email``, ``properties.`order id```)."""
    toks = tokenize(text)
    if len(toks) != 2 or toks[0].kind != "path" and not (toks[0].kind == "kw"):
        pos = toks[1].pos if len(toks) > 1 and toks[0].kind in ("path", "kw") else 0
        raise ExpressionError("expected a field path such as properties.email", pos, text)
    return toks[0].value if toks[0].kind == "path" else (toks[0].value,)
