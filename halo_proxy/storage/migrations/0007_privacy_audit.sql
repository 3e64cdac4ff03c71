-- The audit trail of operator privacy requests (`DELETE /_halo/delete-user`, `GET /_halo/export-user`): who asked
-- (the key's name), when, about whom as a keyed hash only (the identifier's blind index: a later request for the
-- same person can be recognised, nobody can read who it was), and what was done (counts).
CREATE TABLE IF NOT EXISTS privacy_audit (
    id            bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    at            timestamptz NOT NULL,
    action        text        NOT NULL CHECK (action IN ('delete', 'export')),
    subject_kind  text        NOT NULL CHECK (subject_kind IN ('email', 'phone', 'email+phone')),
    subject_hash  bytea       NOT NULL,
    key_name      text        NOT NULL,
    counts        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS privacy_audit_tenant_at ON privacy_audit (tenant_id, at);
