-- Custom events from the browser (`POST /_halo/event`, `HaloTrack.track`), stored against the visitor's session
-- and deleted with it (storage/sessions.py: delete_sessions, purge_expired).
CREATE TABLE IF NOT EXISTS events (
    id          bigserial   PRIMARY KEY,
    tenant_id   text        NOT NULL,
    session_id  uuid        NOT NULL,
    name        text        NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    props_enc   bytea,                      -- the props JSON, encrypted (props may hold personal data); NULL: none
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events (tenant_id, session_id, id);
