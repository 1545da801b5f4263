-- Queries of the API keys (zart_dramatiq.api_keys). {schema} is bound to the configured schema.
-- Every query that returns keys returns these columns, in this order:
-- id, name, scopes, created_at, last_used_at, revoked_at.

-- name: insert_key
-- Nothing when the id is taken (a collision of random ids): the caller draws another.
INSERT INTO {schema}.api_keys (id, name, scopes, hash)
VALUES (%(id)s, %(name)s, %(scopes)s, %(hash)s)
ON CONFLICT (id) DO NOTHING
RETURNING id, name, scopes, created_at, last_used_at, revoked_at

-- name: key_by_id
-- A key and its hash, revoked or not: the caller tells them apart.
SELECT id, name, scopes, created_at, last_used_at, revoked_at, hash
  FROM {schema}.api_keys
 WHERE id = %(id)s

-- name: list_keys
SELECT id, name, scopes, created_at, last_used_at, revoked_at
  FROM {schema}.api_keys
 ORDER BY created_at, id

-- name: revoke_key
-- Nothing when the key is unknown or already revoked.
UPDATE {schema}.api_keys
   SET revoked_at = now()
 WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id

-- name: touch_key
-- Record a use at %(now)s unless one was recorded after %(stale)s: of
-- processes verifying the key at the same moment, one writes. Nothing when
-- another did, or the key was revoked meanwhile.
UPDATE {schema}.api_keys
   SET last_used_at = %(now)s
 WHERE id = %(id)s
   AND revoked_at IS NULL
   AND (last_used_at IS NULL OR last_used_at <= %(stale)s)
RETURNING last_used_at
