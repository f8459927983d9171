-- State of the MoEngage-facing API (loyalty_moengage.api): one row per accepted connector
-- webhook, so a redelivered request is answered from here instead of enrolling or crediting
-- twice. Idempotent: applied by `loyalty_moengage.db.apply_schema`.

CREATE SCHEMA IF NOT EXISTS loyalty_api;

-- idem_key is "hdr:<Idempotency-Key header>" or "body:<sha256 of the canonical body>", scoped
-- by program (the api_key's identity). A row older than the window (default 24 h) no longer
-- counts: the next request with that key is treated as new and overwrites it.
CREATE TABLE IF NOT EXISTS loyalty_api.idempotency (
    program_id    text NOT NULL,
    idem_key      text NOT NULL,
    request_hash  text NOT NULL,            -- sha256 of the canonical body, to spot key reuse
    status_code   integer,                  -- NULL while the owning transaction is open
    response      text,                     -- the exact JSON body sent, replayed byte for byte
    request       jsonb,                    -- the validated customer_details (audit; no keys)
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program_id, idem_key)
);
CREATE INDEX IF NOT EXISTS idempotency_created_idx ON loyalty_api.idempotency (created_at);
