"""Exceptions raised by the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, column, row or user at fault."""


class DownloadError(RuntimeError):
    """A dataset could not be downloaded, verified or extracted."""
