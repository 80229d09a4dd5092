"""HTML escaping for the report: every string is escaped unless marked safe.

The report is assembled from small fragments. Text that comes from the user (titles,
image names, model names, class names, error messages, configuration values) must never
reach the page as markup, so the helpers here escape *everything* by default and only
fragments built by these helpers are wrapped in :class:`Markup`, the marker for "already
safe HTML". :func:`tag` escapes its text children and attribute values, so a fragment
built with it cannot carry an unescaped user string.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any, Iterable, Optional, Union

__all__ = ["Markup", "escape", "tag", "join", "png_data_uri", "figure_data_uri", "safe_id"]

_ATTR_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


class Markup(str):
    """A string of HTML that is already safe (built by this module's helpers)."""

    __slots__ = ()

    def __html__(self) -> str:  # the convention of markupsafe / Jinja
        return str(self)


def escape(value: Any) -> Markup:
    """Escape ``value`` for HTML text or a quoted attribute value (``&<>"'``).

    :class:`Markup` passes through unchanged; anything else is converted with ``str`` and
    escaped with :func:`html.escape` (``quote=True``).

    Examples
    --------
    >>> escape('<script>alert(1)</script>')
    '&lt;script&gt;alert(1)&lt;/script&gt;'
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    """Concatenate fragments, escaping every part that is not :class:`Markup`."""
    return Markup(escape(sep).join(escape(p) for p in parts))


def tag(name: str, *children: Any, **attrs: Any) -> Markup:
    """An HTML element with escaped children and attribute values.

    Parameters
    ----------
    name : str
        Element name (lower-case letters and digits).
    *children : str, Markup, numbers, or None
        Content; plain strings are escaped, ``None`` is skipped.
    **attrs
        Attributes; a trailing ``_`` is dropped (``class_="x"``), ``_`` becomes ``-``
        (``data_k=1`` -> ``data-k``). ``True`` gives a bare attribute, ``None`` / ``False``
        omit it. Event-handler attributes (``on...``) are refused.

    Returns
    -------
    Markup
    """
    if not re.fullmatch(r"[a-z][a-z0-9]*", name):
        raise ValueError(f"name: expected a lower-case element name, got {name!r}")
    parts = [f"<{name}"]
    for key, value in attrs.items():
        attr = key.rstrip("_").replace("_", "-")
        if not _ATTR_NAME.match(attr):
            raise ValueError(f"attrs: invalid attribute name {key!r}")
        if attr.startswith("on"):
            raise ValueError(f"attrs: event-handler attributes are not allowed in the report, got {attr!r}")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(f" {attr}")
        else:
            parts.append(f' {attr}="{escape(value)}"')
    parts.append(">")
    void = name in ("img", "br", "hr", "meta", "col", "wbr")
    if void:
        if children:
            raise ValueError(f"children: <{name}> cannot have content")
        return Markup("".join(parts))
    body = "".join(escape(c) for c in children if c is not None)
    return Markup("".join(parts) + body + f"</{name}>")


def safe_id(prefix: str, index: Union[int, str]) -> str:
    """An element id made only of ``[a-z0-9-]`` (never derived from user text)."""
    text = f"{prefix}-{index}".lower()
    if not re.fullmatch(r"[a-z0-9-]+", text):
        raise ValueError(f"prefix/index: expected letters, digits and '-', got {text!r}")
    return text


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError("data: expected the bytes of a PNG file")
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode("ascii")


def figure_data_uri(fig: Any, dpi: Optional[float] = 80) -> str:
    """Render a matplotlib figure to PNG and return it as a data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return png_data_uri(buf.getvalue())
