-- Touches are written only in the same statement as their session's row (storage/sessions.py, _WRITE_VISIT),
-- so the foreign key to sessions guarded nothing that statement does not already guarantee, and it cost every
-- page view of a new or returning visitor a lookup and a row lock on the session just written. Worse, that
-- lookup runs from a plan each database connection keeps: one prepared while `sessions` was small scanned the
-- whole table, so page-view writes slowed down as sessions grew until the connection was replaced.
-- Deleting a session now deletes its touches explicitly, in the same statement (delete_sessions, purge_expired).
ALTER TABLE touches DROP CONSTRAINT IF EXISTS touches_tenant_id_session_id_fkey;

-- A touch left by a session deleted before this migration ran (none is expected: the cascade removed them).
DELETE FROM touches t
WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.tenant_id = t.tenant_id AND s.id = t.session_id);
