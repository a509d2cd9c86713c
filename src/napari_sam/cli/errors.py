"""Errors of the command line itself (no heavy imports)."""


class UsageError(Exception):
    """A problem with the command line itself: ``main`` reports it as a usage error (exit status 2)."""
