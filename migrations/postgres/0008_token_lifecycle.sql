-- Token lifecycle (`ovc token create --expires-in`, `ovc token list`, `ovc token revoke`).
-- A token past its expires_at, or with revoked_at set, is refused as UNAUTHENTICATED.
-- NULL expires_at: it never expires. (id and revoked_at exist since 0005.)
ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMPTZ;
