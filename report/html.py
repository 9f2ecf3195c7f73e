"""A tiny HTML/SVG builder that escapes by construction.

Every string passed as text or as an attribute value is escaped unless it is ``Safe``
(markup this module built). Report code never concatenates HTML by hand, so a caption
holding ``<script>`` or ``"><img onerror=...>`` can only ever become text. Tag and
attribute names are checked, and URL attributes accept only in-page anchors and the
``data:image/...`` thumbnails the report makes itself.
"""
from __future__ import annotations

import html
import re
from typing import Any, Iterable

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9:-]*$")
_URL_ATTRS = {"href", "src", "xlink:href", "action", "formaction"}
_SAFE_URL = re.compile(r"^(#[A-Za-z0-9_-]*|data:image/(jpeg|png);base64,[A-Za-z0-9+/=]+)$")
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr"}


class Safe(str):
    """Markup that is already escaped (built here); never wrap user data in it."""

    __slots__ = ()


def esc(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def _attr_name(key: str) -> str:
    name = key.rstrip("_").replace("_", "-")
    if not _NAME.match(name) or name.lower().startswith("on"):
        raise ValueError(f"attribute name {key!r} is not allowed")
    return name


def _attrs(attrs: dict[str, Any]) -> str:
    out = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = _attr_name(key)
        if value is True:
            out.append(f" {name}")
            continue
        text = str(value)
        if name in _URL_ATTRS and not _SAFE_URL.match(text):
            raise ValueError(f"{name}={text[:40]!r}: only #anchors and data:image thumbnails are allowed")
        out.append(f' {name}="{esc(text)}"')
    return "".join(out)


def _children(items: Iterable[Any]) -> str:
    parts = []
    for item in items:
        if item is None or item is False:
            continue
        if isinstance(item, (list, tuple)):
            parts.append(_children(item))
        else:
            parts.append(esc(item))
    return "".join(parts)


def el(tag: str, *children: Any, **attrs: Any) -> Safe:
    """``el("td", "text", class_="n", data_col="kept")`` -> ``<td class="n" data-col="kept">text</td>``."""
    if not _NAME.match(tag) or tag.lower() in ("script", "style"):
        raise ValueError(f"tag {tag!r} is not allowed here (scripts and styles come from report/static only)")
    if tag in VOID:
        if children:
            raise ValueError(f"<{tag}> takes no children")
        return Safe(f"<{tag}{_attrs(attrs)}>")
    return Safe(f"<{tag}{_attrs(attrs)}>{_children(children)}</{tag}>")


def join(items: Iterable[Any]) -> Safe:
    return Safe(_children(list(items)))


def slug(*parts: str) -> str:
    """An id usable in ``href="#..."``: lowercase alphanumerics and dashes, plus a short hash for uniqueness."""
    import hashlib

    text = "-".join(parts)
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "x"
    return f"{base}-{hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=3).hexdigest()}"


def raw_block(tag: str, content: str) -> Safe:
    """``<style>`` or ``<script>`` from the packaged static files only (they hold no user data)."""
    if tag not in ("style", "script"):
        raise ValueError(tag)
    if f"</{tag}" in content.lower():
        raise ValueError(f"static {tag} contains a closing tag")
    return Safe(f"<{tag}>{content}</{tag}>")
