-- Visitor sessions, their touch history, and anonymous aggregates for consent-denied visits.
-- Every row carries tenant_id, and every key and index starts with it.

-- Merges two click-id maps {"gclid": {"value": "...", "at": "<iso>"}, ...}, keeping for each name the entry
-- with the latest "at" (the second map wins a tie).
CREATE FUNCTION halo_merge_click_ids(current_ids jsonb, new_ids jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(name, entry), '{}'::jsonb)
    FROM (
        SELECT DISTINCT ON (name) name, entry
        FROM (
            SELECT key AS name, value AS entry, 0 AS rank FROM jsonb_each(coalesce(current_ids, '{}'::jsonb))
            UNION ALL
            SELECT key, value, 1 FROM jsonb_each(coalesce(new_ids, '{}'::jsonb))
        ) both_maps
        ORDER BY name, (entry ->> 'at')::timestamptz DESC NULLS LAST, rank DESC
    ) latest
$$;

CREATE TABLE sessions (
    tenant_id           text        NOT NULL,
    id                  uuid        NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,

    -- first touch: what brought the visitor the first time; never changes once set
    ft_source           text,
    ft_medium           text,
    ft_campaign         text,
    ft_term             text,
    ft_content          text,
    ft_utm_id           text,
    ft_channel          text        NOT NULL,
    ft_referrer_domain  text,
    ft_referrer_url     text,
    ft_landing_path     text        NOT NULL,
    ft_at               timestamptz NOT NULL,

    -- last touch: the latest visit that brought campaign data
    lt_source           text,
    lt_medium           text,
    lt_campaign         text,
    lt_term             text,
    lt_content          text,
    lt_utm_id           text,
    lt_channel          text        NOT NULL,
    lt_referrer_domain  text,
    lt_referrer_url     text,
    lt_landing_path     text        NOT NULL,
    lt_at               timestamptz NOT NULL,

    -- latest value of each click id, with the time it was seen: {"gclid": {"value": "...", "at": "<iso>"}}
    click_ids           jsonb       NOT NULL DEFAULT '{}'::jsonb,

    device_type         text,
    browser             text,
    os                  text,
    country             text,
    region              text,
    city                text,

    consent_analytics   boolean     NOT NULL,
    consent_marketing   boolean     NOT NULL,
    gpc                 boolean     NOT NULL DEFAULT false,
    consent_source      text,

    ip_hash             bytea,      -- keyed hash of the latest IP
    ip_enc              bytea,      -- encrypted latest IP, only while marketing consent is given
    user_agent_enc      bytea,
    fbp                 text,
    fbc                 text,

    PRIMARY KEY (tenant_id, id)
);

-- Retention sweeps and "active since" queries per tenant.
CREATE INDEX sessions_tenant_updated_at ON sessions (tenant_id, updated_at);

CREATE TABLE touches (
    id                  bigserial   PRIMARY KEY,
    tenant_id           text        NOT NULL,
    session_id          uuid        NOT NULL,
    at                  timestamptz NOT NULL,
    source              text,
    medium              text,
    campaign            text,
    term                text,
    content             text,
    utm_id              text,
    channel             text        NOT NULL,
    referrer_domain     text,
    referrer_url        text,
    landing_path        text        NOT NULL,
    click_ids           jsonb       NOT NULL DEFAULT '{}'::jsonb,   -- {"gclid": "..."} as seen on this touch
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);

-- One touch per session and instant: a batch written twice (a retry after a lost answer) adds no duplicates.
CREATE UNIQUE INDEX touches_tenant_session_at ON touches (tenant_id, session_id, at);

CREATE TABLE anon_events (
    tenant_id           text        NOT NULL,
    day                 date        NOT NULL,
    utm_source          text        NOT NULL DEFAULT '',
    utm_medium          text        NOT NULL DEFAULT '',
    utm_campaign        text        NOT NULL DEFAULT '',
    referrer_domain     text        NOT NULL DEFAULT '',
    path                text        NOT NULL DEFAULT '',
    channel             text        NOT NULL DEFAULT '',
    count               bigint      NOT NULL CHECK (count >= 0),
    CONSTRAINT anon_events_key UNIQUE (tenant_id, day, utm_source, utm_medium, utm_campaign, referrer_domain, path, channel)
);
