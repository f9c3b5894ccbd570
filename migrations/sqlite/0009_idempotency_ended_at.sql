-- An idempotency key answers repeats until 24 h after its operation *ended* (as EC2's
-- client tokens do), not 24 h after the request: `ended_at` is set when the operation
-- reaches a terminal state (NULL while it runs; such keys are never purged).
ALTER TABLE idempotency_keys ADD COLUMN ended_at INTEGER;
UPDATE idempotency_keys SET ended_at = (
    SELECT o.updated_at FROM operations o
    WHERE o.id = idempotency_keys.operation_id
      AND o.state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'STUCK'));
-- A key whose operation row is gone can never end: count it from the request.
UPDATE idempotency_keys SET ended_at = created_at
WHERE ended_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.id = idempotency_keys.operation_id);
CREATE INDEX idempotency_keys_ended_at ON idempotency_keys (ended_at);
