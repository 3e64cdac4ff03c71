"""PostgreSQL storage: embedded server, pool, migrations and repositories."""
