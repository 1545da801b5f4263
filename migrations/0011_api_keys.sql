-- API keys of the HTTP API. Expand only: a new table, which workers of the
-- previous release never read.

-- One row per key. The key itself (zk_<id>_<secret>) is shown once, when it is
-- created, and never stored: the row keeps sha256(secret), which is enough to
-- check a key and useless for making one.
CREATE TABLE api_keys (
    -- The public part of the key: it names the key in listings and in revoke.
    id           text        PRIMARY KEY,
    name         text,
    scopes       text[]      NOT NULL
                 CHECK (cardinality(scopes) > 0
                        AND scopes <@ ARRAY['read', 'events', 'admin']::text[]),
    -- sha256 of the secret: 32 bytes, never the key or the secret.
    hash         bytea       NOT NULL CHECK (octet_length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Written at most once a minute per key, not on every request.
    last_used_at timestamptz,
    -- A revoked key is kept, for the record, and no longer accepted.
    revoked_at   timestamptz
);
