"""Untrusted text (corpus titles, URLs, chunk ids, model output, file names) made safe for the terminal.

Two separate dangers, so two steps:
- rich parses `[...]` as markup: a title holding `[/b]` raises MarkupError and `[link=...]` becomes a live
  link. `rich.markup.escape` (or a `rich.text.Text`, which is never parsed) handles that, but nothing else.
- Control characters reach the terminal as they are: ESC starts colour changes, cursor moves, screen clears
  and OSC-8 hyperlinks; a carriage return overwrites the line. rich strips only a few of them (BEL, BS, CR,
  VT, FF), never ESC or the C1 range. `printable` replaces every control character by its visible escape
  (`\\x1b`), so the text is shown literally and no sequence can start, even one split across streamed pieces.
"""

from __future__ import annotations

import re

# C0 controls, DEL and C1 controls, plus the Unicode bidi overrides/isolates that reorder what is displayed
# ("Trojan source"). Newline and tab are handled by `printable`'s `newlines` flag.
_UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, newlines: bool = False) -> str:
    """`text` with every control character shown as an escape (`\\x1b`); with newlines=True, newline and tab
    stay (multi-line model answers), otherwise they are escaped too (one-line fields cannot fake a line)."""
    text = str(text)
    if newlines:
        return _UNSAFE_RE.sub(lambda m: m.group(0) if m.group(0) in "\n\t" else _visible(m), text)
    return _UNSAFE_RE.sub(_visible, text)


def markup_safe(text: object, newlines: bool = False) -> str:
    """`printable(text)` escaped for embedding in a rich markup string (f"[dim]{markup_safe(url)}[/dim]")."""
    from rich.markup import escape

    return escape(printable(text, newlines))


def plain(text: object, style: str = "", newlines: bool = False):
    """A rich Text of `printable(text)`: rendered as is, never parsed as markup (table cells, streamed tokens)."""
    from rich.text import Text

    return Text(printable(text, newlines), style=style)


def say(message: str) -> None:
    """Print a rich-markup message to stderr; paths, corpus values and errors in it go through markup_safe."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message)
