-- dispatcher_submit(): publish a dispatcher task from SQL (a trigger, pg_cron, any client).
--
--   SELECT public.dispatcher_submit('emails', 'myapp.tasks.send_email', '["someone@example.com"]');
--   SELECT public.dispatcher_submit('emails', 'myapp.tasks.report', '[]', '{"period": "week"}',
--                                   '{"timeout": 60, "on_duplicate": "discard"}');
--
-- The functions are created in the first schema of the installer's search_path (public
-- above). Install them in a schema only trusted roles may CREATE in (this file refuses a
-- schema where PUBLIC may), and call them by their schema-qualified name (or with a
-- search_path of trusted schemas only): a call resolves through the caller's search_path,
-- where an overload another role created would take it over. Inside, they resolve names in
-- pg_catalog, then their own schema only (set at the end of this file), never through the
-- caller's search_path; they call built-in functions by their pg_catalog name, but operators
-- by their symbol, so a role that may CREATE in their schema is trusted like its owner.
--
-- It builds a message valid against task-message.schema.json, sends it with pg_notify (as
-- chunk envelopes when it is 8000 bytes or more), and returns the uuid the message carries
-- (options.uuid when given, else a new UUID4), as text. Like any NOTIFY, it is delivered
-- when the calling transaction commits, and never if it rolls back.
-- Options: timeout, delay (seconds), on_duplicate (parallel, discard, serial, queue_one),
-- bind (boolean), uuid (text), guid (text). Needs PostgreSQL 13 or later.
-- It refuses, naming the place, what no service would read: arrays and objects nested more
-- than 64 levels (the message, args or kwargs, then what they hold), integers of more than
-- 4300 digits, numbers with a fraction beyond a double's range (about 1.8e308).
--
-- Signing (signed-envelope.schema.json): when the settings dispatcher.signing_key_id and
-- dispatcher.signing_secret are both set, the message is signed with HMAC-SHA256, which
-- needs the pgcrypto extension in this database. Set the secret in the session or the
-- transaction only, e.g. SELECT set_config('dispatcher.signing_secret', $1, true): values set
-- with ALTER ROLE or ALTER DATABASE can be read by every role (pg_roles, pg_db_role_setting).

-- No BEGIN/COMMIT of its own, so that it can run in a transaction of the caller's (a
-- migration of an application's framework): run it with psql as `psql -1 -v ON_ERROR_STOP=1
-- -f`, so that a refusal below changes nothing.

-- An operator (||, =, ~ ...) of the install schema can match the functions' operands better
-- than pg_catalog's, and would receive what they handle (the signing secret): refuse a
-- schema any role may create in (public on PostgreSQL 14 and earlier), before creating
-- anything.
DO $trusted$
BEGIN
    IF pg_catalog.has_schema_privilege('public', pg_catalog.current_schema(), 'CREATE') THEN
        RAISE EXCEPTION 'dispatcher_submit.sql: refusing to install into schema %: PUBLIC has CREATE on it, so any role could create operators the functions would call; run REVOKE CREATE ON SCHEMA % FROM PUBLIC, or install into a schema only trusted roles can CREATE in',
            pg_catalog.quote_ident(pg_catalog.current_schema()), pg_catalog.quote_ident(pg_catalog.current_schema());
    END IF;
END
$trusted$;

-- Run by a client that goes on after an error (psql without ON_ERROR_STOP), the refusal
-- above would not stop the statements below: in a schema any role may create in, this
-- one empties the session's search_path, so that every CREATE below fails ("no schema has
-- been selected to create in") and nothing is installed there.
SELECT CASE WHEN pg_catalog.has_schema_privilege('public', pg_catalog.current_schema(), 'CREATE')
    THEN pg_catalog.set_config('search_path', '', false) END;

-- Versions before this one returned uuid, and CREATE OR REPLACE cannot change a return type.
DO $upgrade$
BEGIN
    IF (SELECT prorettype FROM pg_proc
        WHERE oid = pg_catalog.to_regprocedure('dispatcher_submit(text, text, jsonb, jsonb, jsonb)')) = 'uuid'::regtype THEN
        DROP FUNCTION IF EXISTS dispatcher_submit(text, text, jsonb, jsonb, jsonb);
    END IF;
END
$upgrade$;

-- dispatcher_unreadable_number() and dispatcher_unreadable_path(): what in args or kwargs no
-- service can read back, and where. dispatcher_submit.sql and dispatcher_enqueue.sql both
-- define them, alike, so that either file installs on its own.
CREATE OR REPLACE FUNCTION dispatcher_unreadable_number(value jsonb) RETURNS text
LANGUAGE sql
IMMUTABLE STRICT
AS $function$
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(value) <> 'number' THEN NULL
        WHEN pg_catalog.strpos(value::text, '.') = 0 THEN
            CASE WHEN pg_catalog.length(pg_catalog.ltrim(value::text, '-')) > 4300 THEN
                'the integer has more than 4300 digits, too many to send (a service reads integers of at most 4300 digits)'
            END
        -- jsonb writes no exponent, so a number of at most 308 characters is below 1e308:
        -- most are, and need no cast to numeric.
        WHEN pg_catalog.length(value::text) <= 308 THEN NULL
        -- 2^1024 - 2^970: from there on, a double rounds to infinity (the service reads
        -- non-integers as doubles and refuses an infinite one).
        WHEN pg_catalog.abs(value::text::numeric) >= 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792 THEN
            'the number ' || pg_catalog.left(value::text, 20) || '... is out of range (a service reads a number with a fraction as a double: below 1.8e308)'
    END
$function$;

CREATE OR REPLACE FUNCTION dispatcher_unreadable_path(value jsonb, path text) RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
AS $function$
DECLARE
    member record;
    found text;
BEGIN
    CASE pg_catalog.jsonb_typeof(value)
    WHEN 'array' THEN
        FOR member IN SELECT e.n - 1 AS n, e.item
                FROM pg_catalog.jsonb_array_elements(value) WITH ORDINALITY AS e(item, n) ORDER BY e.n LOOP
            found := dispatcher_unreadable_path(member.item, path || '[' || member.n || ']');
            IF found IS NOT NULL THEN
                RETURN found;
            END IF;
        END LOOP;
    WHEN 'object' THEN
        FOR member IN SELECT e.key, e.item
                FROM pg_catalog.jsonb_each(value) AS e(key, item) ORDER BY e.key COLLATE "C" LOOP
            found := dispatcher_unreadable_path(member.item, path || CASE
                WHEN member.key ~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN '.' || member.key
                ELSE '[' || pg_catalog.to_jsonb(member.key)::text || ']' END);
            IF found IS NOT NULL THEN
                RETURN found;
            END IF;
        END LOOP;
    ELSE
        found := dispatcher_unreadable_number(value);
        IF found IS NOT NULL THEN
            RETURN path || ': ' || found;
        END IF;
    END CASE;
    RETURN NULL;
END;
$function$;

CREATE OR REPLACE FUNCTION dispatcher_submit(
    channel text,
    task text,
    args jsonb DEFAULT '[]',
    kwargs jsonb DEFAULT '{}',
    options jsonb DEFAULT '{}'
) RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $function$
DECLARE
    max_bytes CONSTANT integer := 7999;
    task_id text;
    key_id text := nullif(pg_catalog.current_setting('dispatcher.signing_key_id', true), '');
    secret text := nullif(pg_catalog.current_setting('dispatcher.signing_secret', true), '');
    crypto_schema name;
    signed_at text;
    signature text;
    message jsonb;
    body text;
    message_id text;
    slice_size integer;
    slices text[];
    encoded bytea;
    start integer;
    stop integer;
    envelope text;
    position integer;
    unknown text;
    unreadable text;
    seconds numeric;
    option_name text;
BEGIN
    IF channel IS NULL OR channel !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'dispatcher_submit: channel %: not a valid channel name (1-63 bytes of ASCII letters, digits, ''_'', ''.'', ''-'' or '':'')',
            pg_catalog.left(pg_catalog.quote_nullable(channel), 40) || CASE WHEN pg_catalog.length(pg_catalog.quote_nullable(channel)) > 40 THEN '... (' || pg_catalog.length(pg_catalog.quote_nullable(channel)) || ' characters)' ELSE '' END;
    END IF;
    IF task IS NULL OR pg_catalog.length(task) > 255 OR task !~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$' THEN
        RAISE EXCEPTION 'dispatcher_submit: task %: not a valid task name (dotted Python identifiers in ASCII, at most 255 characters)',
            pg_catalog.left(pg_catalog.quote_nullable(task), 40) || CASE WHEN pg_catalog.length(pg_catalog.quote_nullable(task)) > 40 THEN '... (' || pg_catalog.length(pg_catalog.quote_nullable(task)) || ' characters)' ELSE '' END;
    END IF;
    IF args IS NULL OR pg_catalog.jsonb_typeof(args) <> 'array' THEN
        RAISE EXCEPTION 'dispatcher_submit: args must be a JSON array, got %', coalesce(pg_catalog.jsonb_typeof(args), 'NULL');
    END IF;
    IF kwargs IS NULL OR pg_catalog.jsonb_typeof(kwargs) <> 'object' THEN
        RAISE EXCEPTION 'dispatcher_submit: kwargs must be a JSON object, got %', coalesce(pg_catalog.jsonb_typeof(kwargs), 'NULL');
    END IF;
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'dispatcher_submit: options must be a JSON object, got %', coalesce(pg_catalog.jsonb_typeof(options), 'NULL');
    END IF;
    SELECT pg_catalog.string_agg(key, ', ' ORDER BY key) INTO unknown FROM pg_catalog.jsonb_object_keys(options) AS key
        WHERE key NOT IN ('timeout', 'delay', 'on_duplicate', 'bind', 'uuid', 'guid');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'dispatcher_submit: options: unknown key(s) % (expected: timeout, delay, on_duplicate, bind, uuid, guid)', unknown;
    END IF;
    -- A refused value is shown cut to 40 characters, and its length: a number may have a
    -- hundred thousand digits, a string megabytes.
    FOREACH option_name IN ARRAY ARRAY['timeout', 'delay'] LOOP
        IF options ? option_name THEN
            IF pg_catalog.jsonb_typeof(options -> option_name) <> 'number' THEN
                RAISE EXCEPTION 'dispatcher_submit: options.%: expected a number of seconds, got %', option_name,
                    pg_catalog.left((options -> option_name)::text, 40) || CASE WHEN pg_catalog.length((options -> option_name)::text) > 40 THEN '... (' || pg_catalog.length((options -> option_name)::text) || ' characters)' ELSE '' END;
            END IF;
            seconds := (options ->> option_name)::numeric;
            IF seconds < 0 OR seconds > 31536000 THEN
                RAISE EXCEPTION 'dispatcher_submit: options.%: must be between 0 and 31536000 seconds, got %', option_name,
                    pg_catalog.left((options -> option_name)::text, 40) || CASE WHEN pg_catalog.length((options -> option_name)::text) > 40 THEN '... (' || pg_catalog.length((options -> option_name)::text) || ' characters)' ELSE '' END;
            END IF;
        END IF;
    END LOOP;
    IF options ? 'on_duplicate' AND (options ->> 'on_duplicate') NOT IN ('parallel', 'discard', 'serial', 'queue_one')
        OR options ? 'on_duplicate' AND pg_catalog.jsonb_typeof(options -> 'on_duplicate') <> 'string' THEN
        RAISE EXCEPTION 'dispatcher_submit: options.on_duplicate: % is not one of parallel, discard, serial, queue_one',
            pg_catalog.left((options -> 'on_duplicate')::text, 40) || CASE WHEN pg_catalog.length((options -> 'on_duplicate')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'on_duplicate')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'bind' AND pg_catalog.jsonb_typeof(options -> 'bind') <> 'boolean' THEN
        RAISE EXCEPTION 'dispatcher_submit: options.bind: expected true or false, got %',
            pg_catalog.left((options -> 'bind')::text, 40) || CASE WHEN pg_catalog.length((options -> 'bind')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'bind')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'uuid' AND (pg_catalog.jsonb_typeof(options -> 'uuid') <> 'string' OR pg_catalog.length(options ->> 'uuid') NOT BETWEEN 1 AND 255) THEN
        RAISE EXCEPTION 'dispatcher_submit: options.uuid: expected a string of 1 to 255 characters, got %',
            pg_catalog.left((options -> 'uuid')::text, 40) || CASE WHEN pg_catalog.length((options -> 'uuid')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'uuid')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'guid' AND pg_catalog.jsonb_typeof(options -> 'guid') <> 'string' THEN
        RAISE EXCEPTION 'dispatcher_submit: options.guid: expected a string, got %',
            pg_catalog.left((options -> 'guid')::text, 40) || CASE WHEN pg_catalog.length((options -> 'guid')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'guid')::text) || ' characters)' ELSE '' END;
    END IF;

    -- As services decode messages: at most 64 levels (the message, args or kwargs, then what
    -- they hold), and every number readable.
    IF pg_catalog.jsonb_path_exists(pg_catalog.jsonb_build_array(args, kwargs), 'strict $.**{64} ? (@.type() == "array" || @.type() == "object")'::jsonpath) THEN
        RAISE EXCEPTION 'dispatcher_submit: %: nested more than 63 levels deep (a message may nest 64 levels in all, the message itself included)',
            CASE WHEN pg_catalog.jsonb_path_exists(args, 'strict $.**{63} ? (@.type() == "array" || @.type() == "object")'::jsonpath) THEN 'args' ELSE 'kwargs' END;
    END IF;
    -- Only a number of 1e308 or more in magnitude may be unreadable: one path query tells
    -- whether there is any, several times faster than a check of each number.
    IF pg_catalog.jsonb_path_exists(pg_catalog.jsonb_build_array(args, kwargs), 'strict $.** ? (@.type() == "number" && (@ >= 1e308 || @ <= -1e308))'::jsonpath) THEN
        unreadable := coalesce(dispatcher_unreadable_path(args, 'args'::text), dispatcher_unreadable_path(kwargs, 'kwargs'::text));
        IF unreadable IS NOT NULL THEN
            RAISE EXCEPTION 'dispatcher_submit: %', unreadable;
        END IF;
    END IF;

    task_id := coalesce(options ->> 'uuid', pg_catalog.gen_random_uuid()::text);
    message := pg_catalog.jsonb_build_object(
        'task', task,
        'uuid', task_id,
        'args', args,
        'kwargs', kwargs,
        'time_pub', extract(epoch FROM pg_catalog.clock_timestamp())
    ) || (options - 'uuid');
    body := message::text;

    IF key_id IS NOT NULL OR secret IS NOT NULL THEN
        IF key_id IS NULL OR secret IS NULL THEN
            RAISE EXCEPTION 'dispatcher_submit: cannot sign: set both dispatcher.signing_key_id and dispatcher.signing_secret (or neither)';
        END IF;
        IF key_id !~ '^[A-Za-z0-9_.-]{1,64}$' THEN
            RAISE EXCEPTION 'dispatcher_submit: dispatcher.signing_key_id %: not a valid key id (1-64 ASCII letters, digits, ''_'', ''.'' or ''-'')', pg_catalog.quote_literal(key_id);
        END IF;
        SELECT n.nspname INTO crypto_schema
            FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
            WHERE e.extname = 'pgcrypto';
        IF crypto_schema IS NULL THEN
            RAISE EXCEPTION 'dispatcher_submit: cannot sign the message: dispatcher.signing_key_id is set but the pgcrypto extension is not installed in this database'
                USING HINT = 'Run CREATE EXTENSION pgcrypto, or unset dispatcher.signing_key_id and dispatcher.signing_secret.';
        END IF;
        -- signature = hex(HMAC-SHA256(secret, signed_at || '.' || body)), all in UTF-8.
        signed_at := pg_catalog.round(extract(epoch FROM pg_catalog.clock_timestamp())::numeric, 6)::text;
        -- The secret goes to no function but pg_catalog's and pgcrypto's, named in full.
        EXECUTE pg_catalog.format('SELECT pg_catalog.encode(%I.hmac($1, $2, %L::text), %L::text)', crypto_schema, 'sha256', 'hex')
            INTO signature
            USING pg_catalog.convert_to(signed_at || '.' || body, 'UTF8'::name),
                pg_catalog.convert_to(secret, 'UTF8'::name);
        body := pg_catalog.jsonb_build_object(
            '__dispatcher_signed__', 'v1', 'key_id', key_id, 'signed_at', signed_at,
            'signature', signature, 'body', body
        )::text;
    END IF;

    IF pg_catalog.octet_length(body) > 8388608 THEN
        RAISE EXCEPTION 'dispatcher_submit: the message is % bytes of JSON, over the limit of 8388608 (8 MiB) that services take', pg_catalog.octet_length(body);
    END IF;
    IF pg_catalog.octet_length(body) <= max_bytes THEN
        PERFORM pg_catalog.pg_notify(channel, body);
        RETURN task_id;
    END IF;

    -- Too large for one NOTIFY: chunk envelopes (chunk-envelope.schema.json), all sent in
    -- this transaction. Slices are cut on the UTF-8 bytes (at a character's first byte), in
    -- time linear in the message's size, then halved until each envelope fits.
    message_id := pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '');
    encoded := pg_catalog.convert_to(body, 'UTF8'::name);
    slice_size := 3900;
    <<cutting>>
    LOOP
        slices := '{}';
        start := 0;
        WHILE start < pg_catalog.octet_length(encoded) LOOP
            stop := least(start + slice_size, pg_catalog.octet_length(encoded));
            WHILE stop < pg_catalog.octet_length(encoded) AND pg_catalog.get_byte(encoded, stop) BETWEEN 128 AND 191 LOOP
                stop := stop - 1;  -- a continuation byte: cut before its character
            END LOOP;
            slices := slices || pg_catalog.convert_from(substring(encoded FROM start + 1 FOR stop - start), 'UTF8'::name);
            start := stop;
        END LOOP;
        FOR position IN 1 .. pg_catalog.array_length(slices, 1) LOOP
            envelope := pg_catalog.jsonb_build_object(
                '__dispatcherd_chunk__', 'v1', 'message_id', message_id,
                'index', position - 1, 'total', pg_catalog.array_length(slices, 1),
                'payload', slices[position]
            )::text;
            IF pg_catalog.octet_length(envelope) > max_bytes THEN
                slice_size := slice_size / 2;
                CONTINUE cutting;
            END IF;
        END LOOP;
        EXIT cutting;
    END LOOP;
    IF pg_catalog.array_length(slices, 1) > 10000 THEN
        RAISE EXCEPTION 'dispatcher_submit: the message is too large (% bytes of JSON)', pg_catalog.octet_length(body);
    END IF;
    FOR position IN 1 .. pg_catalog.array_length(slices, 1) LOOP
        PERFORM pg_catalog.pg_notify(channel, pg_catalog.jsonb_build_object(
            '__dispatcherd_chunk__', 'v1', 'message_id', message_id,
            'index', position - 1, 'total', pg_catalog.array_length(slices, 1),
            'payload', slices[position]
        )::text);
    END LOOP;
    RETURN task_id;
END;
$function$;

COMMENT ON FUNCTION dispatcher_submit(text, text, jsonb, jsonb, jsonb) IS
    'Publish a dispatcher task message (signed when dispatcher.signing_key_id is set, chunked when large); returns its uuid.';

-- The functions meant to be called resolve the names they use in pg_catalog first, then in
-- the schema this file created them in (current_schema(), where CREATE puts them), then
-- pg_temp: never through the caller's search_path, where another role could have put a
-- function that matches a call better than the built-in (a convert_to(text, text) would
-- receive the signing secret). Set here, at install time, so that the file run by hand with
-- psql does it. The helpers they call run under that path too; they have none of their own,
-- which would be set again at every call, once per JSON node of their recursion. Called
-- directly, a helper resolves names through its caller's search_path, and handles only
-- what that caller gave it (never a secret).
DO $search_path$
DECLARE
    signature text;
BEGIN
    FOREACH signature IN ARRAY ARRAY[
        'dispatcher_submit(text, text, jsonb, jsonb, jsonb)'
    ] LOOP
        EXECUTE pg_catalog.format(
            'ALTER FUNCTION %1$I.%2$s SET search_path = pg_catalog, %1$I, pg_temp',
            pg_catalog.current_schema(), signature);
    END LOOP;
END
$search_path$;
