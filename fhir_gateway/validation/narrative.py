"""Narrative xhtml basics (https://hl7.org/fhir/R4/narrative.html#xhtml): txt-1 and txt-2, natively.

The div must be well-formed XHTML with a `div` root in the XHTML namespace, use only the basic
formatting elements, carry no scripts, event handler attributes or `javascript:` links, and have
some content (text or an image). DOCTYPE and entity declarations are refused before parsing, so a
hostile narrative cannot expand entities.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from fhir_gateway.validation.walk import Walk

XHTML = "http://www.w3.org/1999/xhtml"
ALLOWED = frozenset(
    [
        "a",
        "abbr",
        "acronym",
        "b",
        "big",
        "blockquote",
        "br",
        "caption",
        "cite",
        "code",
        "col",
        "colgroup",
        "dd",
        "dfn",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "tt",
        "ul",
        "var",
    ]
)
_NS = "{" + XHTML + "}"


def check(walk: Walk) -> None:
    for scope in walk.scopes:
        text = scope.resource.get("text")
        if isinstance(text, dict) and isinstance(text.get("div"), str):
            check_div(walk, text["div"], f"{scope.prefix}.text.div")


def check_div(walk: Walk, div: str, expr: str) -> None:
    if "<!DOCTYPE" in div.upper() or "<!ENTITY" in div.upper():
        walk.error("invalid", "The narrative must not contain a DOCTYPE or entity declarations", expr)
        return
    try:
        root = ET.fromstring(div)
    except ET.ParseError:
        walk.error("invalid", "The narrative is not well-formed XHTML", expr)
        return
    if root.tag != _NS + "div":
        if root.tag.rpartition("}")[2] == "div":
            walk.error("invalid", f"Wrong namespace on the XHTML div, it should be '{XHTML}'", expr)
        else:
            walk.error("invalid", "The narrative root element must be a div", expr)
        return
    problems = set()
    for element in root.iter():
        name = element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""
        if element.tag != _NS + name:
            problems.add("elements outside the XHTML namespace")
        elif name not in ALLOWED:
            problems.add(f"the element '{name}'")
        for attribute, value in element.attrib.items():
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on"):
                problems.add(f"the event attribute '{local}'")
            elif _scripted(value):
                problems.add("javascript: links")
    for problem in sorted(problems):
        walk.error("invalid", f"Constraint failed: txt-1: the narrative must not contain {problem}", expr)
    if not _has_content(root):
        walk.error(
            "invalid",
            "Constraint failed: txt-2: 'The narrative SHALL have some non-whitespace content'",
            expr,
        )


def _scripted(value: Any) -> bool:
    return isinstance(value, str) and "javascript:" in value.replace(" ", "").lower()


def _has_content(root: ET.Element) -> bool:
    return any(e.tag == _NS + "img" for e in root.iter()) or bool("".join(root.itertext()).strip())
