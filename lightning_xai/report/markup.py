"""HTML that is escaped by construction: every report page and chart is built from :func:`element` calls.

Text and attribute values are escaped by default. The only fragments that pass unescaped are :class:`Markup`
instances, and only this module makes them: from :func:`element` (whose parts were escaped), :func:`stylesheet`
(our own CSS constant, refused if it could close its ``<style>``) and :func:`markdown` (escaped, then the few
Markdown constructs the monitor writes). Everything read back from a run (tags, texts, class names, method names)
is plain ``str`` and so can never become markup. Tags and attribute names are checked against allow-lists: no
``<script>``, no ``on*=`` handlers, and ``src`` only as an inline ``data:image/png;base64`` image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from html import escape

__all__ = ["CSP", "Markup", "document", "element", "fragment", "markdown", "stylesheet"]

#: The report's Content-Security-Policy: no scripts, no fetches, no frames; inline images and inline CSS only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_HTML_TAGS = frozenset({
    "html", "head", "body", "meta", "title", "style", "h1", "h2", "h3", "h4", "div", "span", "p", "ul", "ol", "li",
    "table", "thead", "tbody", "tr", "th", "td", "b", "strong", "em", "code", "pre", "figure", "figcaption", "img",
    "br", "section", "small", "details", "summary",
})
_SVG_TAGS = frozenset({"svg", "g", "text", "line", "rect", "polyline", "circle", "path"})
_VOID = frozenset({"meta", "img", "br"})
_ATTRIBUTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]*$")
_URL_ATTRIBUTES = frozenset({"href", "xlink:href", "src", "srcset", "action", "formaction", "poster", "background",
                             "data", "srcdoc", "style"})
_DATA_PNG = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/]*={0,2}$")


class Markup(str):
    """A fragment of HTML that this module built (escaped parts only). Never construct one from data.

    ``str`` values anywhere in :func:`element` are escaped; a ``Markup`` is inserted as it is.
    """

    __slots__ = ()

    def __add__(self, other: object) -> str:  # "a" + Markup or Markup + "a" is plain text again, never markup
        return str.__add__(str(self), other)  # type: ignore[operator]


def _text(value: object) -> str:
    if isinstance(value, Markup):
        return str(value)
    if isinstance(value, bool):
        return escape(str(value))
    if isinstance(value, float):
        return escape(f"{value:g}" if math.isfinite(value) else str(value))
    return escape(str(value), quote=True)


def _children(parts: Iterable[object]) -> Iterable[str]:
    for part in parts:
        if part is None:
            continue
        if isinstance(part, (str, int, float)):
            yield _text(part)
        elif isinstance(part, Iterable):
            yield from _children(part)
        else:
            yield _text(part)


def _attribute_name(key: str) -> str:
    return key.rstrip("_").replace("_", "-")


def _attributes(attrs: Mapping[str, object], tag: str) -> str:
    out = []
    for key, value in attrs.items():
        name = _attribute_name(key)
        if not _ATTRIBUTE.match(name) or name.lower().startswith("on"):
            raise ValueError(f"attribute {name!r} is not allowed in the report (no event handlers)")
        if value is None or value is False:
            continue
        inline_png = name == "src" and tag == "img" and isinstance(value, str) and _DATA_PNG.match(value)
        if name.lower() in _URL_ATTRIBUTES and not inline_png:
            raise ValueError(f"attribute {name}= on <{tag}> is not allowed in the report (only an inline PNG as "
                             "<img src=data:image/png;base64,...>)")
        if value is True:
            out.append(f" {name}")
        elif isinstance(value, float):
            number = f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"
            out.append(f' {name}="{number}"')
        else:
            out.append(f' {name}="{escape(str(value), quote=True)}"')
    return "".join(out)


def element(tag: str, *children: object, attrs: Mapping[str, object] | None = None, **kwargs: object) -> Markup:
    """``<tag attrs>children</tag>``, every ``str`` child and every attribute value escaped.

    Args:
        tag: an HTML or SVG element name from the allow-list (no ``script``, ``iframe``, ``object``, ``a``...).
        children: text (escaped), numbers, :class:`Markup` (inserted as is), ``None`` (skipped) or iterables of these.
        attrs: attributes whose names are not Python identifiers (e.g. ``{"http-equiv": ...}``).
        kwargs: attributes; ``class_`` -> ``class``, ``font_size`` -> ``font-size``. ``None``/``False`` leave the
            attribute out, ``True`` writes it bare, floats get at most two decimals.

    Raises:
        ValueError: for a tag or attribute outside the allow-lists (a programming error, never data).

    Example::

        >>> element("td", "<b>", class_="num")
        '<td class="num">&lt;b&gt;</td>'
        >>> element("p", "a ", element("b", "bold"))
        '<p>a <b>bold</b></p>'
    """
    if tag not in _HTML_TAGS and tag not in _SVG_TAGS:
        raise ValueError(f"element <{tag}> is not allowed in the report")
    attributes = _attributes({**(attrs or {}), **kwargs}, tag)
    if tag in _VOID:
        if children:
            raise ValueError(f"<{tag}> takes no children")
        return Markup(f"<{tag}{attributes}>")
    return Markup(f"<{tag}{attributes}>{''.join(_children(children))}</{tag}>")


def fragment(*children: object) -> Markup:
    """Several parts side by side (escaped like :func:`element`'s children), without a wrapping element."""
    return Markup("".join(_children(children)))


def stylesheet(css: str) -> Markup:
    """A ``<style>`` element with our own CSS constant (its text is not escaped: CSS is raw text in HTML).

    Raises:
        ValueError: if the CSS contains ``<`` (it could close the element).
    """
    if "<" in css:
        raise ValueError("the stylesheet must not contain '<'")
    return Markup(f"<style>{css}</style>")


def document(title: str, *body: object, css: str = "") -> Markup:
    """A whole page: doctype, UTF-8, the :data:`CSP` meta tag first in ``<head>``, the title, the stylesheet."""
    head = element("head", element("meta", attrs={"http-equiv": "Content-Security-Policy", "content": CSP}),
                   element("meta", charset="utf-8"),
                   element("meta", name="referrer", content="no-referrer"),
                   element("title", title), stylesheet(css) if css else None)
    return Markup("<!DOCTYPE html>" + element("html", head, element("body", *body), lang="en"))


# ------------------------------------------------------------------------------------------ Markdown, the safe subset
_INLINE = re.compile(r"\*\*(?P<bold>.+?)\*\*|`(?P<code>[^`]+)`")
_TABLE_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _inline(text: str) -> Markup:
    parts: list[object] = []
    last = 0
    for match in _INLINE.finditer(text):
        parts.append(text[last:match.start()])
        parts.append(element("b", match["bold"]) if match["bold"] is not None else element("code", match["code"]))
        last = match.end()
    parts.append(text[last:])
    return fragment(parts)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [cell.strip() for cell in line.split("|")]


def _table(lines: list[str]) -> Markup:
    if len(lines) >= 2 and _TABLE_SEPARATOR.match(lines[1]):
        head, rows = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    else:
        head, rows = None, [_cells(x) for x in lines]
    header = element("tr", [element("th", _inline(c)) for c in head]) if head else None
    body = [element("tr", [element("td", _inline(c)) for c in row]) for row in rows]
    return element("table", header, body)


def markdown(text: str) -> Markup:
    """Render the Markdown the monitor writes (paragraphs, ``**bold**``, `` `code` ``, ``- `` lists, ``|`` tables)
    from untrusted text: everything is escaped first, so any other HTML or Markdown in it shows as plain text.

    Example::

        >>> markdown("**epoch 1** <script>\\n\\n| a | b |\\n|---|---|\\n| 1 | 2 |")
        '<p><b>epoch 1</b> &lt;script&gt;</p><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>'
    """
    blocks: list[Markup] = []
    kind, lines = "", []

    def close() -> None:
        if not lines:
            return
        if kind == "table":
            blocks.append(_table(lines))
        elif kind == "list":
            blocks.append(element("ul", [element("li", _inline(x[2:].strip())) for x in lines]))
        else:
            parts: list[object] = []
            for i, x in enumerate(lines):
                parts += [element("br") if i else None, _inline(x.strip())]
            blocks.append(element("p", parts))
        lines.clear()

    for line in str(text).splitlines():
        stripped = line.strip()
        this = "" if not stripped else "table" if stripped.startswith("|") else (
            "list" if stripped.startswith(("- ", "* ")) else "paragraph")
        if this != kind:
            close()
            kind = this
        if this:
            lines.append(stripped)
    close()
    return fragment(blocks)
