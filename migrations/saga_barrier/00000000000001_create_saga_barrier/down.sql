DROP TABLE saga_barrier;
