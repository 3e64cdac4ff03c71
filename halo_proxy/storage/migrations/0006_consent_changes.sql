-- Consent changes the browser reported (`POST /_halo/consent`), per session: the consent history a person's
-- export shows. No identifier is kept here; the rows go with their session.
CREATE TABLE IF NOT EXISTS consent_changes (
    id          bigserial   PRIMARY KEY,
    tenant_id   text        NOT NULL,
    session_id  uuid        NOT NULL,
    at          timestamptz NOT NULL,
    analytics   boolean     NOT NULL,
    marketing   boolean     NOT NULL,
    gpc         boolean     NOT NULL,
    change      text        NOT NULL CHECK (change IN ('granted', 'withdrawn', 'updated'))
);
CREATE INDEX IF NOT EXISTS consent_changes_session ON consent_changes (tenant_id, session_id, id);
