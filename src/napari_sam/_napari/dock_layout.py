"""The dock widgets' shared layout: a narrow column of sections that scrolls instead of squeezing."""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

DOCK_MAX_WIDTH = 400  # leave the canvas most of the window
DOCK_MIN_WIDTH = 370  # the fields and their labels side by side, without a sideways scroll bar


def scrolling_column(*items: QWidget) -> QScrollArea:
    """``items`` one under the other, top-aligned, in a frameless scroll area.

    Parameters
    ----------
    *items
        The Qt widgets to stack, in order.

    Returns
    -------
    QScrollArea
        A short dock scrolls through them; a tall one leaves the space below empty.
    """
    content = QWidget()
    layout = QVBoxLayout(content)
    layout.setContentsMargins(2, 2, 2, 2)
    for item in items:
        layout.addWidget(item)
    layout.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(content)
    return scroll
