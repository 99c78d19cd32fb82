r"""Item sources as text: file names that are not UTF-8, written losslessly and shown readably.

An item's source is its path relative to the image folder, as Python reads
it (:func:`os.fsdecode`): the bytes of a name that are not valid UTF-8 (a
name written in Latin-1, say ``caf\xe9.png``) become lone surrogates
``U+DC80``-``U+DCFF`` ("surrogateescape"), which no UTF-8 file can hold.
``items.csv``, ``labels.csv`` and everything printed use this escaping
instead, which is valid UTF-8 and reversible:

- a byte 0x80-0xff that is not part of valid UTF-8 is written ``\xHH``
  (two lowercase hex digits: ``caf\xe9.png``);
- a backslash is written ``\\``;
- any other lone surrogate (none comes from a file name) is written ``\uHHHH``;
- everything else is written as it is.

Reading undoes exactly these sequences; a backslash followed by anything
else is kept as it is, so files written before this escaping (where ``\``
was written as itself) read back the same unless they hold one of the three
sequences literally.
"""

from __future__ import annotations

import re

_TO_ESCAPE = re.compile("[\\\\\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(\\|x[89a-fA-F][0-9a-fA-F]|u[dD][89a-fA-F][0-9a-fA-F]{2})")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x5C:  # backslash
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a file name that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _unescape(match: re.Match[str]) -> str:
    body = match.group(1)
    if body == "\\":
        return "\\"
    if body[0] == "x":
        return chr(0xDC00 + int(body[1:], 16))
    return chr(int(body[1:], 16))


def source_to_text(source: str) -> str:
    """The source as valid UTF-8 text (see the module docstring); unchanged for ordinary names."""
    return _TO_ESCAPE.sub(_escape, source)


def source_from_text(text: str) -> str:
    """The source written as ``text`` by :func:`source_to_text` (its inverse)."""
    return _ESCAPE.sub(_unescape, text) if "\\" in text else text


def printable(text: str) -> str:
    """Any text (a path given on the command line, say) with its lone surrogates as ``\\xHH`` / ``\\uHHHH``.

    For messages only, not reversible: backslashes stay as they are. Such a
    text can be printed to any UTF-8 stream.
    """
    return _SURROGATE.sub(_escape, text)
