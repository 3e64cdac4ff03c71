"""PostgreSQL storage: embedded server, pool, migrations and repositories.

Modules: `embedded` (the embedded server), `db` (pool, errors, ping), `migrations` (schema versions),
`sessions` (visitor sessions, touches, anonymous aggregates). Nothing here imports aiohttp.
"""

from .errors import EmbeddedPostgresError, StorageError, StorageUnavailable

__all__ = ["EmbeddedPostgresError", "StorageError", "StorageUnavailable"]
