"""Fixtures of the GUI tests (run under Xvfb)."""

from __future__ import annotations

import pytest


@pytest.fixture
def notifications():
    """The napari notifications shown while the test runs (what a user sees pop up)."""
    from napari.utils.notifications import notification_manager

    received = []
    notification_manager.notification_ready.connect(received.append)
    yield received
    notification_manager.notification_ready.disconnect(received.append)
