"""A search query string parsed into what the SQL needs (R4 search.html), validated up front.

Repeating a parameter ANDs it, commas inside one value OR it. Unknown parameters and modifiers are
a warning under lenient handling (the parameter is left out, and so out of the self link, as the
spec asks) and a 400 under strict handling. A malformed value is always a 400 that names the
parameter and never repeats the value: search values are often PHI (names, birth dates, MRNs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fhir_gateway.definitions.search_parameters import get, resource_types
from fhir_gateway.errors import BadRequest, Issue
from fhir_gateway.store.search.criteria import Criterion, Unsupported, parse_criterion

IGNORED = frozenset({"_format", "_pretty"})
TOTALS = frozenset({"none", "estimate", "accurate"})
SUMMARIES = frozenset({"true", "text", "data", "count", "false"})
SORTABLE_TYPES = frozenset({"string", "token", "date", "number", "quantity", "uri"})
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})  # searched and sorted on `resources` itself
ITERATE = frozenset({"iterate", "recurse"})  # :recurse is the STU3 spelling


@dataclass(frozen=True, slots=True)
class Include:
    """`_include`/`_revinclude` = `Source:param[:Target]`, or `*` (every reference, any source).

    For `_include` the matched resources are the source and the targets are added; for
    `_revinclude` the matched resources are the targets and the sources are added.
    """

    source_type: str | None
    param: str | None
    target_type: str | None
    iterate: bool


@dataclass(frozen=True, slots=True)
class ParsedSearch:
    resource_type: str
    filters: tuple[Criterion, ...]
    sort: tuple[tuple[str, bool], ...]  # (parameter code, descending)
    count: int
    offset: int
    total: str | None
    includes: tuple[Include, ...]
    revincludes: tuple[Include, ...]
    summary: str | None
    elements: tuple[str, ...] | None
    warnings: tuple[Issue, ...]
    query: tuple[tuple[str, str], ...] = ()  # the parameters used, as written (for links)

    def link_params(self, *, offset: int) -> list[tuple[str, str]]:
        """The query of a self/next/previous link: every parameter used, then the page position."""
        return [*self.query, ("_count", str(self.count)), ("_offset", str(offset))]


def parse_search(
    resource_type: str,
    raw: Sequence[tuple[str, str]],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
) -> ParsedSearch:
    parser = _Parser(resource_type, strict)
    for key, value in raw:
        parser.add(key, value)
    count = min(parser.integer("_count", default_count), max_count)
    return ParsedSearch(
        resource_type=resource_type,
        filters=tuple(parser.filters),
        sort=tuple(parser.sort),
        count=count,
        offset=parser.integer("_offset", 0),
        total=parser.single.get("_total"),
        includes=tuple(parser.includes),
        revincludes=tuple(parser.revincludes),
        summary=parser.single.get("_summary"),
        elements=parser.elements,
        warnings=tuple(parser.warnings),
        query=tuple(parser.query),
    )


class _Parser:
    """Accumulates one query's parameters; `add` takes them one at a time, in order."""

    def __init__(self, resource_type: str, strict: bool) -> None:
        self.resource_type = resource_type
        self.strict = strict
        self.filters: list[Criterion] = []
        self.sort: list[tuple[str, bool]] = []
        self.includes: list[Include] = []
        self.revincludes: list[Include] = []
        self.elements: tuple[str, ...] | None = None
        self.single: dict[str, str] = {}
        self.warnings: list[Issue] = []
        self.query: list[tuple[str, str]] = []

    def add(self, key: str, value: str) -> None:
        name, _, modifier = key.partition(":")
        if name in IGNORED:
            return
        try:
            if name in ("_count", "_offset"):
                self.single[name] = value
                return  # link_params writes the page position itself
            if name in ("_include", "_revinclude"):
                self._include(name, modifier, value)
            elif name == "_sort":
                self._sort(value)
            elif name in ("_total", "_summary"):
                self._choice(name, value, TOTALS if name == "_total" else SUMMARIES)
            elif name == "_elements":
                self.elements = tuple(e.strip() for e in value.split(",") if e.strip())
            elif value == "":
                return  # an empty filter value constrains nothing
            else:
                self.filters.append(parse_criterion(self.resource_type, key, value))
        except Unsupported as exc:
            self._unsupported(key, str(exc))
            return
        except ValueError:
            raise BadRequest(
                f"Invalid value for search parameter '{key}'", expression=key, code="value"
            ) from None
        self.query.append((key, value))

    def integer(self, name: str, default: int) -> int:
        text = self.single.get(name)
        if text is None:
            return default
        if not (text.isascii() and text.isdigit()):
            raise BadRequest(f"{name} must be a non-negative integer", expression=name, code="value")
        return int(text)

    def _unsupported(self, key: str, text: str) -> None:
        if self.strict:
            raise BadRequest(text, expression=key, code="not-supported")
        self.warnings.append(Issue("warning", "not-supported", f"{text}; the parameter was ignored", [key]))

    def _choice(self, name: str, value: str, allowed: frozenset[str]) -> None:
        if value not in allowed:
            raise ValueError(name)
        self.single[name] = value

    def _sort(self, value: str) -> None:
        keys: list[tuple[str, bool]] = []
        for item in value.split(","):
            code = item.strip().removeprefix("-")
            if not code:
                raise ValueError("_sort")
            param = get(self.resource_type, code)
            if code not in RESOURCE_COLUMNS and (param is None or param.type not in SORTABLE_TYPES):
                raise Unsupported(f"Cannot sort {self.resource_type} by '{code}'")
            keys.append((code, item.strip().startswith("-")))
        self.sort = keys

    def _include(self, name: str, modifier: str, value: str) -> None:
        if modifier and modifier not in ITERATE:
            raise Unsupported(f"Modifier ':{modifier}' is not supported on {name}")
        iterate = bool(modifier)
        target_list = self.includes if name == "_include" else self.revincludes
        if value == "*":
            target_list.append(Include(None, None, None, iterate))
            return
        parts = value.split(":")
        if len(parts) not in (2, 3) or parts[0] not in resource_types():
            raise Unsupported(f"{name} must be Type:parameter[:TargetType] or *")
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if code != "*":
            param = get(source, code)
            if param is None or param.type != "reference":
                raise Unsupported(f"{source} has no reference search parameter '{code}' for {name}")
            if target is not None and param.targets and target not in param.targets:
                raise Unsupported(f"'{target}' is not a target type of {source}.{code}")
        target_list.append(Include(source, None if code == "*" else code, target, iterate))
