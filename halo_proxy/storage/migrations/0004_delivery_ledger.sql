-- Delivery lanes and the ledger.
--
-- send_started_at: set (with a renewed lease) just before a row's request leaves for its platform, cleared by
-- its outcome. A row claimed again while it is still set had a send whose outcome nobody recorded (a worker
-- killed mid-send, a stop that could not wait): the send may have reached the platform. Platforms that
-- deduplicate on the event id get it again; a GA4 event without a dedup key is not sent twice (delivery worker).
ALTER TABLE forwards ADD COLUMN IF NOT EXISTS send_started_at timestamptz;

-- Heartbeats and releases find a worker's leases by worker.
CREATE INDEX IF NOT EXISTS forwards_pending_locked_by ON forwards (locked_by) WHERE status = 'pending' AND locked_by IS NOT NULL;

-- The ledger: every attempt to deliver a forward, with what came of it and the consent it was sent under.
CREATE TABLE IF NOT EXISTS forward_attempts (
    id              bigserial   PRIMARY KEY,
    forward_id      bigint      NOT NULL REFERENCES forwards (id) ON DELETE CASCADE,
    tenant_id       text        NOT NULL,
    platform        text        NOT NULL,
    attempt         integer     NOT NULL,          -- the forward's attempts counter at this attempt
    at              timestamptz NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('sent', 'retry', 'dead', 'unconfirmed', 'released')),
    reason          text,                          -- a machine word (REASONS of forwarders/models.py)
    detail          text,                          -- a short sentence without PII, tokens or URLs
    http_status     integer,
    consent_marketing boolean,                     -- the consent under which it was sent (NULL: not recorded)
    worker          text
);
CREATE INDEX IF NOT EXISTS forward_attempts_forward ON forward_attempts (forward_id, id);
