"""Text from the registry, made safe to print on the operator's terminal.

Tags, failure reasons, device ids and error details are chosen by cars (or
by whoever holds a publisher or enrolment token), and a terminal obeys what
it is sent: ``ESC ] 0 ; title BEL`` retitles the window, ``ESC [ 2 J``
clears it, C1 ``CSI`` (U+009B) does the same on some terminals, and bidi
overrides (U+202E) make a line read differently from its bytes.  ``safe``
replaces every such character with a visible Python-style escape
(``\\x1b``, ``\\u202e``), so the operator sees that something odd was sent
instead of having it executed.  Newlines and tabs are escaped too: a tag
must not be able to forge a row of a table.

The CLI prints with ``print``, never through rich's markup, so ``[red]``
in device text is printed literally; use ``rich.markup.escape`` as well if
remote text is ever rendered through a rich ``Console``.
"""

from __future__ import annotations

import unicodedata

# Unicode categories a terminal does not draw as a glyph: controls (C0, DEL, C1), format characters
# (bidi overrides and isolates, zero-width joiners), surrogates, private use, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch == "\n":
        return "\\n"
    if ch == "\r":
        return "\\r"
    if ch == "\t":
        return "\\t"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(value: object) -> str:
    """``str(value)`` with every control, format and bidi character replaced by a visible escape."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to replace (isprintable is False for all the above)
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)
