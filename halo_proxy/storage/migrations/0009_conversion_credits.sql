-- Each conversion's credits under each attribution model (halo_proxy/tracking/credit.py), so that a report over a
-- period is one indexed GROUP BY instead of re-crediting every conversion's stored touches at each request.
--
-- A conversion's credits are written in the very statement that inserts it (storage/conversions.py): one row per
-- model and touch key, with the conversion's created_at, kind and currency copied so the report never joins.
-- `conversions` sum to exactly 1 per conversion and model, `revenue` to exactly its value (in its currency).
-- No foreign key (each credit row would cost the insert a lookup, from a plan kept per connection, see 0003):
-- the triggers below delete a conversion's credits with it, and conversions are never deleted by HaloTrack
-- (retention keeps them; erasure anonymises them and keeps their attribution, so credits stay as they are).
CREATE TABLE conversion_credits (
    tenant_id           text            NOT NULL,
    conversion_id       uuid            NOT NULL,
    created_at          timestamptz     NOT NULL,       -- the conversion's: what a report's period selects on
    model               text            NOT NULL CHECK (model IN ('first_touch', 'last_touch', 'last_non_direct',
                                                                  'linear', 'time_decay', 'position_based')),
    kind                text            NOT NULL CHECK (kind IN ('lead', 'order')),
    source              text            NOT NULL,
    medium              text            NOT NULL,
    campaign            text            NOT NULL,
    channel             text            NOT NULL,
    conversions         numeric(7, 6)   NOT NULL CHECK (conversions >= 0 AND conversions <= 1),
    revenue             numeric(18, 4)  NOT NULL,       -- in the conversion's currency
    currency            char(3),
    days_to_convert     integer                         -- NULL: the conversion has no touch (Unattributed)
);

-- The report, its daily series and its channels: a range of one tenant's credits under one model, read from
-- the index alone (every column the report sums is included).
CREATE INDEX conversion_credits_report ON conversion_credits (tenant_id, model, created_at)
    INCLUDE (source, medium, campaign, channel, kind, currency, conversions, revenue, days_to_convert);
-- A conversion's credits: rewritten when it is credited again, deleted with it.
CREATE INDEX conversion_credits_conversion ON conversion_credits (tenant_id, conversion_id);

-- The version of the credit rules a conversion's credits were computed with (tracking/credit.py CREDIT_VERSION);
-- NULL: not credited yet. That is every conversion stored before this migration, any stored by a process of an
-- older version during a rolling upgrade, and any whose attribution, value, currency, kind or times change later
-- (the trigger below). storage/credits.py credits them: in the background at start, and for a report's range
-- before the report reads it.
ALTER TABLE conversions ADD COLUMN credits_version smallint;
CREATE INDEX conversions_tenant_uncredited ON conversions (tenant_id, created_at) WHERE credits_version IS NULL;

CREATE FUNCTION halo_conversion_credits_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.credits_version := NULL;
    RETURN NEW;
END
$$;

-- An erasure drops only the matched session from the attribution: the touches stay, so do the credits.
CREATE TRIGGER conversions_credits_stale
    BEFORE UPDATE OF attribution, value, currency, kind, created_at, occurred_at ON conversions
    FOR EACH ROW
    WHEN ((OLD.attribution - 'session_id') IS DISTINCT FROM (NEW.attribution - 'session_id')
          OR OLD.value IS DISTINCT FROM NEW.value OR OLD.currency IS DISTINCT FROM NEW.currency
          OR OLD.kind IS DISTINCT FROM NEW.kind OR OLD.created_at IS DISTINCT FROM NEW.created_at
          OR OLD.occurred_at IS DISTINCT FROM NEW.occurred_at)
    EXECUTE FUNCTION halo_conversion_credits_stale();

CREATE FUNCTION halo_conversion_credits_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM conversion_credits c USING gone g WHERE c.tenant_id = g.tenant_id AND c.conversion_id = g.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversions_credits_delete
    AFTER DELETE ON conversions REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION halo_conversion_credits_delete();

CREATE FUNCTION halo_conversion_credits_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE conversion_credits;
    RETURN NULL;
END
$$;

CREATE TRIGGER conversions_credits_truncate
    AFTER TRUNCATE ON conversions
    FOR EACH STATEMENT EXECUTE FUNCTION halo_conversion_credits_truncate();
