"""Labels for status and error text that wrap inside a narrow dock instead of widening it."""

from __future__ import annotations

import re

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

ZERO_WIDTH_SPACE = "\u200b"
_LONG_TOKEN = re.compile(r"\S{25,}")  # longer than a dock line holds comfortably
_BREAK_AFTER = re.compile(r"([/\\_.,:;=-])")
_TAG = re.compile(r"(<[^>]*>)")
_LONG_RUN = re.compile(r"[^\s/\\_.,:;=\u200b-]{20}")


def breakable(text: str) -> str:
    """``text`` with break opportunities (zero-width spaces) after separators inside long words.

    Qt wraps only at spaces, so a long path or identifier in an error message would
    make the label, and the dock, as wide as the path.
    """
    return _LONG_TOKEN.sub(lambda match: _break_word(match.group(0)), text)


def _break_word(word: str) -> str:
    """A break opportunity after each separator, and every 20 characters of a run without one."""
    word = _BREAK_AFTER.sub(r"\1" + ZERO_WIDTH_SPACE, word)
    return _LONG_RUN.sub(lambda run: run.group(0) + ZERO_WIDTH_SPACE, word)


def breakable_html(text: str) -> str:
    """:func:`breakable` for rich text: only the text between tags gets break opportunities."""
    return "".join(part if part.startswith("<") else breakable(part) for part in _TAG.split(text))


class WrappingLabel(QLabel):
    """A word-wrapped label of plain text (or rich text with ``rich=True``) whose long words break too."""

    def __init__(self, text: str = "", rich: bool = False):
        super().__init__()
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # errors can be copied
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt name)
        rich = self.textFormat() == Qt.TextFormat.RichText
        super().setText(breakable_html(text) if rich else breakable(text))

    def text(self) -> str:
        """The text as set (without the break opportunities)."""
        return super().text().replace(ZERO_WIDTH_SPACE, "")
