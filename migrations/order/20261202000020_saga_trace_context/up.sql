-- The W3C trace context (its two headers) of the request that started each
-- saga, so that whoever resumes it (recovery after a crash, another
-- instance, an operator's retry) continues the trace it started in. NULL:
-- started without one. A `tracestate` longer than the column is dropped,
-- as W3C lets a hop do, never cut.
ALTER TABLE sagas
    ADD COLUMN traceparent VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN tracestate  VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NULL;
