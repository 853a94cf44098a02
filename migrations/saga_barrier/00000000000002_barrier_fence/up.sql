-- The lease fence each saga call came with (0 when the caller sends none).
-- A call whose fence is lower than the highest one recorded for its saga is
-- refused: an orchestrator instance that lost its lease cannot change this
-- participant any more.
ALTER TABLE saga_barrier ADD COLUMN fence BIGINT NOT NULL DEFAULT 0 AFTER state;
