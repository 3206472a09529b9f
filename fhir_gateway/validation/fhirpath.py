"""A fast evaluator for the part of FHIRPath that R4 invariants mostly use, compiled to closures.

fhirpathpy evaluates any FHIRPath, but costs 40-130 µs per call; a typical resource has a dozen
constraint evaluations, which alone would cap validation well below the write rate we need. Most
R4 constraints are simple shapes (`code.empty() or system.exists()`, `where(...)` over codings,
`implies`), so they are compiled here, once, to Python closures over the plain JSON.

Anything outside the subset raises `Unsupported` at compile time, and anything whose meaning would
need type information at run time (date/Quantity comparison, `is`, `ofType`) raises `Fallback`; the
caller then uses fhirpathpy for that expression or that evaluation. So this module never gives an
answer fhirpathpy would not, it only gives it faster.

Semantics follow FHIRPath N1: collections everywhere, empty propagates through operators, three-
valued `and`/`or`/`xor`/`implies`. Choice elements are reached by their prefix (`value` finds
`valueQuantity`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from fhir_gateway.validation.loader import structures

Env = dict[str, Any]
Fn = Callable[[list[Any], Env], list[Any]]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<var>[%$][A-Za-z_][A-Za-z0-9_]*)|(?P<op><=|>=|!=|!~|[=<>|+\-*/&~(),.\[\]]))"
)
_BINARY = [  # lowest precedence first
    {"implies"},
    {"or", "xor"},
    {"and"},
    {"in", "contains"},
    {"=", "!="},
    {"<", ">", "<=", ">="},
    {"|"},
    {"+", "&"},
]
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class Unsupported(Exception):
    """The expression uses FHIRPath this evaluator does not implement."""


class Fallback(Exception):
    """This evaluation needs type information the plain JSON does not carry."""


_type_names: set[str] | None = None


def _choice_suffixes() -> set[str]:
    global _type_names
    if _type_names is None:
        _type_names = {name[0].upper() + name[1:] for name in structures()["types"]}
    return _type_names


def compile_expression(text: str) -> Fn:
    tokens = _tokens(text)
    parser = _Parser(tokens)
    fn = parser.expression(0)
    if parser.pos != len(tokens):
        raise Unsupported(f"unexpected {tokens[parser.pos][1]!r}")
    return fn


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise Unsupported(f"cannot read {text[pos : pos + 10]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _string(token: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), token[1:-1])


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise Unsupported("unexpected end")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise Unsupported(f"expected {expected!r}")
        self.pos += 1
        return token

    def expression(self, level: int) -> Fn:
        if level == len(_BINARY):
            return self.unary()
        left = self.expression(level + 1)
        while self.peek() in _BINARY[level] and self.tokens[self.pos][0] in ("op", "id"):
            op = self.take()[1]
            right = self.expression(level + 1)
            left = _binary(op, left, right)
        if level == len(_BINARY) - 1 and self.peek() in ("is", "as"):
            raise Unsupported("type operators")
        return left

    def unary(self) -> Fn:
        if self.peek() == "-":
            raise Unsupported("unary minus")
        fn = self.term()
        while self.peek() in (".", "["):
            if self.take()[1] == "[":
                index = self.expression(0)
                self.take("]")
                fn = _index(fn, index)
            else:
                fn = self.invocation(fn)
        return fn

    def term(self) -> Fn:
        kind, value = self.take()
        if kind == "str":
            literal = [_string(value)]
            return lambda focus, env: literal
        if kind == "num":
            number: list[Any] = [float(value) if "." in value else int(value)]
            return lambda focus, env: number
        if kind == "var":
            return _variable(value)
        if value == "(":
            inner = self.expression(0)
            self.take(")")
            return inner
        if value in ("true", "false"):
            boolean = [value == "true"]
            return lambda focus, env: boolean
        if kind == "id":
            return self.invocation(None, (kind, value))
        raise Unsupported(f"unexpected {value!r}")

    def invocation(self, base: Fn | None, token: tuple[str, str] | None = None) -> Fn:
        kind, name = token or self.take()
        if kind != "id":
            raise Unsupported(f"unexpected {name!r}")
        name = name.strip("`")
        if self.peek() == "(":
            self.take("(")
            args: list[Fn] = []
            while self.peek() != ")":
                args.append(self.expression(0))
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            call = _function(name, args)
            if base is None:
                return call
            return lambda focus, env: call(base(focus, env), env)
        member = _member(name)
        if base is None:
            return member
        return lambda focus, env: member(base(focus, env), env)


# --- navigation and variables ---------------------------------------------------------------------


def _member(name: str) -> Fn:
    type_filter = name[:1].isupper()
    suffixes = _choice_suffixes()

    def member(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in focus:
            if not isinstance(item, dict):
                continue
            if type_filter and item.get("resourceType") == name:
                out.append(item)
                continue
            value = item.get(name)
            if value is None:
                for key in item:
                    if key.startswith(name) and key[len(name) :] in suffixes:
                        value = item[key]
                        break
                else:
                    continue
            if isinstance(value, list):
                out.extend(v for v in value if v is not None)
            else:
                out.append(value)
        return out

    return member


def _variable(name: str) -> Fn:
    if name == "$this":
        return lambda focus, env: [env["$this"]] if "$this" in env else focus
    if name == "%ucum":
        ucum = ["http://unitsofmeasure.org"]
        return lambda focus, env: ucum
    if name in ("%resource", "%rootResource", "%context"):
        key = name[1:]
        return lambda focus, env: [env[key]]
    raise Unsupported(f"variable {name}")


def _index(fn: Fn, index: Fn) -> Fn:
    def indexed(focus: list[Any], env: Env) -> list[Any]:
        items = fn(focus, env)
        at = index(focus, env)
        if len(at) != 1 or not isinstance(at[0], int):
            raise Fallback("index")
        return items[at[0] : at[0] + 1]

    return indexed


# --- operators ------------------------------------------------------------------------------------


def _boolean(items: list[Any]) -> bool | None:
    if not items:
        return None
    if len(items) > 1:
        raise Fallback("collection used as a boolean")
    value = items[0]
    return value if isinstance(value, bool) else True


def _binary(op: str, left: Fn, right: Fn) -> Fn:
    if op in ("and", "or", "xor", "implies"):
        return _logic(op, left, right)
    if op in ("=", "!="):
        negate = op == "!="

        def equal(focus: list[Any], env: Env) -> list[Any]:
            a, b = left(focus, env), right(focus, env)
            if not a or not b:
                return []
            result = _equal(a, b)
            return [result != negate]

        return equal
    if op in ("<", ">", "<=", ">="):
        return _compare(op, left, right)
    if op == "|":
        return lambda focus, env: _distinct(left(focus, env) + right(focus, env))
    if op == "in":
        return lambda focus, env: _membership(left(focus, env), right(focus, env))
    if op == "contains":
        return lambda focus, env: _membership(right(focus, env), left(focus, env))
    if op in ("+", "&"):
        return _concat(op, left, right)
    raise Unsupported(op)


def _logic(op: str, left: Fn, right: Fn) -> Fn:
    def logic(focus: list[Any], env: Env) -> list[Any]:
        a = _boolean(left(focus, env))
        if op == "and" and a is False:
            return [False]
        if op == "or" and a is True:
            return [True]
        if op == "implies" and a is False:
            return [True]
        b = _boolean(right(focus, env))
        if op == "and":
            return [False] if b is False else ([True] if a and b else [])
        if op == "or":
            return [True] if b is True else ([False] if a is False and b is False else [])
        if op == "xor":
            return [] if a is None or b is None else [a != b]
        if a is True:
            return [] if b is None else [b]
        return [True] if b is True else []

    return logic


def _equal(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict) or isinstance(y, dict):
            if x != y:
                return False
        elif isinstance(x, bool) != isinstance(y, bool) or x != y:
            return False
    return True


def _compare(op: str, left: Fn, right: Fn) -> Fn:
    def compare(focus: list[Any], env: Env) -> list[Any]:
        a, b = left(focus, env), right(focus, env)
        if not a or not b:
            return []
        if len(a) > 1 or len(b) > 1:
            raise Fallback("comparison of collections")
        x, y = a[0], b[0]
        if isinstance(x, str) and isinstance(y, str):
            if _PARTIAL.fullmatch(x) and _PARTIAL.fullmatch(y):
                x, y = _partial(x, y)
                if x is None:
                    return []  # equal as far as both go, different precision: unknown
            else:
                x, y = _instant(x), _instant(y)
        elif isinstance(x, dict) and isinstance(y, dict):
            x, y = _quantities(x, y)
        numbers = isinstance(x, int | float) and isinstance(y, int | float)
        dates = isinstance(x, list) and isinstance(y, list)
        if isinstance(x, bool) or isinstance(y, bool) or not (numbers or dates):
            raise Fallback("comparison needs types")  # dates, times, quantities, strings
        if op == "<":
            return [x < y]
        if op == ">":
            return [x > y]
        if op == "<=":
            return [x <= y]
        return [x >= y]

    return compare


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


_PARTIAL = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")


def _partial(x: str, y: str) -> tuple[Any, Any]:
    """Dates of any precision (FHIRPath: compare as far as both go; equal prefix and different
    precision is unknown, None)."""
    a, b = [int(p) for p in x.split("-")], [int(p) for p in y.split("-")]
    common = min(len(a), len(b))
    if a[:common] == b[:common] and len(a) != len(b):
        return None, None
    return a[:common] if a[:common] != b[:common] else a, b[:common] if a[:common] != b[:common] else b


def _instant(text: str) -> float:
    """A full dateTime with timezone as epoch seconds; anything else needs precision rules: Fallback."""
    if not _DATE_TIME.fullmatch(text):
        raise Fallback("comparison of partial dates")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Fallback("not a date") from None


def _quantities(x: dict[str, Any], y: dict[str, Any]) -> tuple[Any, Any]:
    """Two Quantities in the same unit compare by value; anything else needs unit conversion: Fallback."""
    same_unit = (x.get("system"), x.get("code"), x.get("unit")) == (
        y.get("system"),
        y.get("code"),
        y.get("unit"),
    )
    if not same_unit or "comparator" in x or "comparator" in y:
        raise Fallback("quantities in different units")
    return x.get("value"), y.get("value")


def _key(value: Any) -> Any:
    return (
        orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        if isinstance(value, dict | list)
        else (type(value), value)
    )


def _distinct(items: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    out = []
    for item in items:
        key = _key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _membership(items: list[Any], collection: list[Any]) -> list[Any]:
    if not items:
        return []
    if len(items) > 1:
        raise Fallback("membership of a collection")
    return [any(_equal([items[0]], [c]) for c in collection)]


def _concat(op: str, left: Fn, right: Fn) -> Fn:
    def concat(focus: list[Any], env: Env) -> list[Any]:
        a, b = left(focus, env), right(focus, env)
        if op == "+" and (not a or not b):
            return []
        x = a[0] if a else ""
        y = b[0] if b else ""
        if len(a) > 1 or len(b) > 1 or not isinstance(x, str) or not isinstance(y, str):
            raise Fallback("+ on non-strings")
        return [x + y]

    return concat


# --- functions ------------------------------------------------------------------------------------


def _with_this(fn: Fn, item: Any, env: Env) -> list[Any]:
    inner = dict(env)
    inner["$this"] = item
    return fn([item], inner)


def _function(name: str, args: list[Fn]) -> Fn:
    arity = len(args)
    if name == "exists":
        if arity == 0:
            return lambda focus, env: [bool(focus)]
        crit = args[0]
        return lambda focus, env: [any(_boolean(_with_this(crit, i, env)) for i in focus)]
    if name == "empty" and arity == 0:
        return lambda focus, env: [not focus]
    if name == "not" and arity == 0:
        return lambda focus, env: [] if (b := _boolean(focus)) is None else [not b]
    if name == "count" and arity == 0:
        return lambda focus, env: [len(focus)]
    if name == "hasValue" and arity == 0:
        return lambda focus, env: [len(focus) == 1 and not isinstance(focus[0], dict | list)]
    if name == "where" and arity == 1:
        crit = args[0]
        return lambda focus, env: [i for i in focus if _boolean(_with_this(crit, i, env))]
    if name == "all" and arity == 1:
        crit = args[0]
        return lambda focus, env: [all(_boolean(_with_this(crit, i, env)) for i in focus)]
    if name == "select" and arity == 1:
        proj = args[0]
        return lambda focus, env: [v for i in focus for v in _with_this(proj, i, env)]
    if name == "first" and arity == 0:
        return lambda focus, env: focus[:1]
    if name == "isDistinct" and arity == 0:
        return lambda focus, env: [len(_distinct(focus)) == len(focus)]
    if name == "distinct" and arity == 0:
        return lambda focus, env: _distinct(focus)
    if name == "trace":
        return lambda focus, env: focus
    if name in ("intersect", "combine", "union", "exclude") and arity == 1:
        other = args[0]
        # the argument is evaluated at the root of the expression ($this), as fhirpath.js does
        return lambda focus, env: _set_op(
            name, focus, other([env["$this"]] if "$this" in env else focus, env)
        )
    if name == "tail" and arity == 0:
        return lambda focus, env: focus[1:]
    if name == "iif" and arity in (2, 3):
        cond, then = args[0], args[1]
        otherwise = args[2] if arity == 3 else None

        def iif(focus: list[Any], env: Env) -> list[Any]:
            if _boolean(cond(focus, env)):
                return then(focus, env)
            return otherwise(focus, env) if otherwise is not None else []

        return iif
    if name in ("startsWith", "contains", "matches") and arity == 1:
        return _string_test(name, args[0])
    if name == "length" and arity == 0:
        return lambda focus, env: [len(focus[0])] if len(focus) == 1 and isinstance(focus[0], str) else []
    raise Unsupported(f"function {name}")


def _set_op(name: str, focus: list[Any], other: list[Any]) -> list[Any]:
    if name == "combine":
        return focus + other
    if name == "union":
        return _distinct(focus + other)
    keys = {_key(item) for item in other}
    if name == "intersect":
        return _distinct([item for item in focus if _key(item) in keys])
    return [item for item in focus if _key(item) not in keys]


def _string_test(name: str, arg: Fn) -> Fn:
    def test(focus: list[Any], env: Env) -> list[Any]:
        if not focus:
            return []
        value = focus[0]
        wanted = arg(focus, env)
        if len(focus) > 1 or not isinstance(value, str) or len(wanted) != 1 or not isinstance(wanted[0], str):
            raise Fallback(f"{name} on non-strings")
        if name == "startsWith":
            return [value.startswith(wanted[0])]
        if name == "contains":
            return [wanted[0] in value]
        return [re.search(wanted[0], value, re.DOTALL) is not None]

    return test
