"""Errors of :mod:`pollinate.audit`."""

from __future__ import annotations

from pollinate.shared.errors import PollinateError


class AuditError(PollinateError, ValueError):
    """An audit input (a key, an envelope, a canary score, a parameter) is unusable.

    The message says which input and what to do instead.
    """
