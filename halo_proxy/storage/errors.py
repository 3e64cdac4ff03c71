"""Exceptions raised by the storage package.

Callers outside `halo_proxy.storage` catch these, never asyncpg's or subprocess's own errors.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises."""


class StorageUnavailable(StorageError):
    """The database cannot be reached (refused, reset, timed out, shutting down)."""


class EmbeddedPostgresError(StorageError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""
