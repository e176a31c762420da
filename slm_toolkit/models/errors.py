"""Errors raised while finding or loading a model."""

from __future__ import annotations


class ModelNotAvailable(Exception):
    """A model spec (builtin name, local folder, hub id) cannot be turned into a loadable folder.

    The message names the spec and says what is missing and what to do about it.
    """
