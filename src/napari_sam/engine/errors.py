"""Errors the engine raises for bad input (no torch import)."""


class InputError(ValueError):
    """The input (image, prompts, labels, parameters) is not usable; the message says what to do."""
