-- fastify-pow: the PostgresStore schema, with the defaults (schema public, table prefix pow_).
-- What store.migrate() runs. For another schema or prefix: postgresSchema({ schema, tablePrefix }).
-- Idempotent; run it in one transaction.
CREATE SCHEMA IF NOT EXISTS "public";

CREATE TABLE IF NOT EXISTS "public"."pow_devices" (
  bucket text NOT NULL,
  fingerprint text NOT NULL,
  user_key text NOT NULL,
  data text NOT NULL,
  user_data text NOT NULL,
  version bigint NOT NULL,
  used_at double precision NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (bucket, fingerprint)
);
CREATE INDEX IF NOT EXISTS "pow_devices_user" ON "public"."pow_devices" (user_key, used_at);
CREATE INDEX IF NOT EXISTS "pow_devices_expiry" ON "public"."pow_devices" (expires_at);

-- Applies a change of one user's devices: every version precondition is checked before any
-- write; NULL when one fails (nothing written), else the fingerprints the limit evicted.
-- Changes of one user run one at a time (an advisory lock), and the devices it checked stay
-- locked until it ends (the sweep cannot take one away meanwhile). Past its deadline (ms since
-- the epoch on this server's clock) it writes nothing, since its caller has answered a 503 by
-- then; it waits for no lock beyond it either.
CREATE OR REPLACE FUNCTION "public"."pow_commit" (
  p_user_key text, p_bucket text, p_user text, p_limit integer, p_fingerprints text[],
  p_versions bigint[], p_data text[], p_ttls bigint[], p_used double precision[], p_deadline double precision
) RETURNS text[] LANGUAGE plpgsql AS $pow$
DECLARE
  n integer := coalesce(array_length(p_fingerprints, 1), 0);
  v_now timestamptz;
  found_version bigint;
  found_versions bigint[] := '{}';
  inherited text;
  written text[] := '{}';
  excess bigint;
  evicted text[] := '{}';
BEGIN
  PERFORM set_config('lock_timeout', greatest(1, floor(p_deadline - extract(epoch FROM clock_timestamp()) * 1000))::bigint || 'ms', true);
  PERFORM pg_advisory_xact_lock(-1431873581, hashtext(p_user_key));
  v_now := clock_timestamp();
  FOR i IN 1..n LOOP
    SELECT version INTO found_version FROM "public"."pow_devices"
      WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i] AND expires_at > v_now FOR UPDATE;
    IF NOT FOUND THEN found_version := 0; END IF;
    IF p_versions[i] IS NOT NULL AND p_versions[i] <> found_version THEN RETURN NULL; END IF;
    found_versions := found_versions || found_version;
  END LOOP;
  DELETE FROM "public"."pow_devices" WHERE user_key = p_user_key AND expires_at <= v_now;
  IF p_user IS NOT NULL THEN
    UPDATE "public"."pow_devices" SET user_data = p_user WHERE user_key = p_user_key AND user_data <> p_user;
  END IF;
  FOR i IN 1..n LOOP
    IF p_data[i] IS NULL THEN
      DELETE FROM "public"."pow_devices" WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i];
    ELSE
      IF found_versions[i] > 0 THEN
        -- A live device, locked above: it keeps its credentials unless the change carries new ones.
        UPDATE "public"."pow_devices" SET user_key = p_user_key, data = p_data[i], user_data = coalesce(p_user, user_data),
            version = version + 1, used_at = p_used[i], expires_at = v_now + p_ttls[i] * interval '1 millisecond'
          WHERE bucket = p_bucket AND fingerprint = p_fingerprints[i];
      END IF;
      -- A new device (an expired row at its address is replaced), or one this change deleted.
      IF found_versions[i] = 0 OR NOT FOUND THEN
        IF p_user IS NULL AND inherited IS NULL THEN
          SELECT user_data INTO inherited FROM "public"."pow_devices"
            WHERE user_key = p_user_key AND expires_at > v_now ORDER BY used_at DESC LIMIT 1;
          IF inherited IS NULL THEN
            RAISE EXCEPTION 'PostgresStore: a new device needs the user''s credentials (DeviceChange.user)';
          END IF;
        END IF;
        INSERT INTO "public"."pow_devices" AS d (bucket, fingerprint, user_key, data, user_data, version, used_at, expires_at)
          VALUES (p_bucket, p_fingerprints[i], p_user_key, p_data[i], coalesce(p_user, inherited), 1, p_used[i],
            v_now + p_ttls[i] * interval '1 millisecond')
          ON CONFLICT (bucket, fingerprint) DO UPDATE SET
            user_key = excluded.user_key, data = excluded.data, user_data = excluded.user_data,
            version = d.version + 1, used_at = excluded.used_at, expires_at = excluded.expires_at;
      END IF;
    END IF;
    IF p_data[i] IS NOT NULL THEN written := written || p_fingerprints[i]; END IF;
  END LOOP;
  IF p_limit IS NOT NULL THEN
    SELECT count(*) - p_limit INTO excess FROM "public"."pow_devices" WHERE user_key = p_user_key AND expires_at > v_now;
    IF excess > 0 THEN
      WITH victims AS (
        SELECT bucket, fingerprint FROM "public"."pow_devices"
          WHERE user_key = p_user_key AND expires_at > v_now AND fingerprint <> ALL (written)
          ORDER BY used_at, fingerprint LIMIT excess
      ), gone AS (
        DELETE FROM "public"."pow_devices" d USING victims v WHERE d.bucket = v.bucket AND d.fingerprint = v.fingerprint
          RETURNING d.fingerprint
      ) SELECT coalesce(array_agg(fingerprint), '{}') INTO evicted FROM gone;
    END IF;
  END IF;
  IF extract(epoch FROM clock_timestamp()) * 1000 > p_deadline THEN
    RAISE EXCEPTION 'PostgresStore: the change ran past its deadline; nothing was written';
  END IF;
  RETURN evicted;
END
$pow$;
