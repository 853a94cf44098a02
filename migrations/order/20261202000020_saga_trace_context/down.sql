ALTER TABLE sagas
    DROP COLUMN tracestate,
    DROP COLUMN traceparent;
