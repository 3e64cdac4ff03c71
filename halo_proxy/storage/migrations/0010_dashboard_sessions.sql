-- Operators signed in to the dashboard (`POST /_halo/dashboard/login`): the browser holds a random token, this
-- table only its SHA-256, with the tenant, the key it signed in with (its name and digest: removing the key from
-- the tenant file ends its sessions), a CSRF token for the page's forms, and when the session ends.
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    token_hash  bytea       PRIMARY KEY,
    tenant_id   text        NOT NULL,
    key_name    text        NOT NULL,
    key_sha256  text        NOT NULL,
    csrf        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
-- Expired sessions are swept by their end.
CREATE INDEX IF NOT EXISTS dashboard_sessions_expires ON dashboard_sessions (expires_at);
