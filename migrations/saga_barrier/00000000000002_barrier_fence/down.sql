ALTER TABLE saga_barrier DROP COLUMN fence;
