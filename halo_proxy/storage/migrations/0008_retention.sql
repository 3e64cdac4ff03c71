-- Retention: custom events expire on their own age (`retention_days.events`), read through this index.
CREATE INDEX IF NOT EXISTS events_tenant_at ON events (tenant_id, at);
-- Finished forwards expire by their last change: the sweep reads them by status, tenant and age.
CREATE INDEX IF NOT EXISTS forwards_finished_tenant_updated ON forwards (tenant_id, updated_at)
    WHERE status IN ('sent', 'dead', 'skipped', 'cancelled');
