-- See migrations/postgres/0008_token_lifecycle.sql. Microseconds since the epoch.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
