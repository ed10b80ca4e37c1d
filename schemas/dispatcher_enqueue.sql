-- dispatcher_enqueue(): store a dispatcher task as a job of a durable queue, from SQL.
--
--   SELECT public.dispatcher_enqueue('orders', 'myapp.tasks.ship', '[42]');
--   SELECT public.dispatcher_enqueue('orders', 'myapp.tasks.report', '[]', '{"period": "week"}',
--                                    '{"max_attempts": 5, "delay": 60, "on_duplicate": "queue_one"}');
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
-- The sibling of dispatcher_submit() for the durable pg_queue broker. It builds a message
-- valid against task-message.schema.json, inserts it into <queue_schema>.jobs (the tables
-- `dispatcherctl migrate` creates; queue_schema defaults to 'dispatcher', as
-- brokers.pg_queue.schema does) and NOTIFYs dispatcher_queue_wakeup with the queue's name,
-- in the calling transaction: the job exists once it commits, never if it rolls back. It
-- returns the uuid the message carries (options.uuid when given, else a new UUID4), as text.
-- Storing a uuid that is stored already does nothing (and returns it): safe to repeat.
--
-- Options: timeout, delay (seconds, to the microsecond, from the call, even in a long transaction or statement:
-- run_after is clock_timestamp() + delay), on_duplicate
-- (parallel, discard, serial, queue_one: enforced across every service by the table),
-- bind (boolean), uuid (text), guid (text), max_attempts (1-1000, default 3 whatever the
-- config says: pass the value of brokers.pg_queue.max_attempts if your config changes it,
-- else the services take the 3 for a value given for the job, and a task's own
-- @task(max_attempts=...) never applies to the row). Needs PostgreSQL 13 or later.
-- It refuses, naming the place, what no service would read: arrays and objects nested more
-- than 64 levels (the message, args or kwargs, then what they hold), integers of more than
-- 4300 digits, numbers with a fraction beyond a double's range (about 1.8e308).
--
-- The queue must be listed under brokers.pg_queue.queues, or no service claims the job.
-- The row is not signed: signing protects NOTIFY, which any role that can connect may send;
-- who may insert into the jobs table is up to the table's privileges (GRANT INSERT).
--
-- dispatcher_duplicate_key(task, args, kwargs) is the job's dup_key: the hex SHA-256 of the
-- JSON text [task, args, kwargs] with object keys sorted, no spaces and every character
-- outside printable ASCII escaped, as dispatcher.schema.duplicate_key() computes it in
-- Python. Numbers are in one canonical form (docs/durable-queues.md, "Table layout"): one
-- without a point in jsonb is an integer (1e5 is 100000: write a float as 100000.0); one
-- with a point is written as the double a service reads, in its shortest text and plain
-- decimal (10.50 is 10.5, 1e-7 is 0.0000001, 1e16 is 10000000000000000; 1 and 1.0 differ).

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
        RAISE EXCEPTION 'dispatcher_enqueue.sql: refusing to install into schema %: PUBLIC has CREATE on it, so any role could create operators the functions would call; run REVOKE CREATE ON SCHEMA % FROM PUBLIC, or install into a schema only trusted roles can CREATE in',
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

-- Internal to dispatcher_duplicate_key(), which sets extra_float_digits for it: called
-- alone, it writes floats as the session's extra_float_digits says.
CREATE OR REPLACE FUNCTION dispatcher_identity_json(value jsonb) RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
AS $function$
DECLARE
    body text;
    double double precision;
    number numeric;
    candidate numeric;
    digits integer;
BEGIN
    CASE pg_catalog.jsonb_typeof(value)
    WHEN 'object' THEN
        RETURN '{' || coalesce((
            SELECT pg_catalog.string_agg(
                dispatcher_identity_json(pg_catalog.to_jsonb(member.key)) || ':'
                    || dispatcher_identity_json(member.item),
                ',' ORDER BY member.key COLLATE "C")
            FROM pg_catalog.jsonb_each(value) AS member(key, item)
        ), '') || '}';
    WHEN 'array' THEN
        RETURN '[' || coalesce((
            SELECT pg_catalog.string_agg(dispatcher_identity_json(element.item), ',' ORDER BY element.n)
            FROM pg_catalog.jsonb_array_elements(value) WITH ORDINALITY AS element(item, n)
        ), '') || ']';
    WHEN 'string' THEN
        body := value::text;  -- quotes, backslashes and control characters escaped already
        IF body ~ '[^ -~]' THEN
            SELECT pg_catalog.string_agg(
                CASE
                    WHEN c.ch ~ '[ -~]' THEN c.ch
                    WHEN pg_catalog.ascii(c.ch) < 65536 THEN '\u' || pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.ascii(c.ch)), 4, '0')
                    ELSE '\u' || pg_catalog.to_hex(55296 + ((pg_catalog.ascii(c.ch) - 65536) >> 10))
                        || '\u' || pg_catalog.to_hex(56320 + ((pg_catalog.ascii(c.ch) - 65536) & 1023))
                END, '' ORDER BY c.n)
            INTO body
            FROM pg_catalog.regexp_split_to_table(body, '') WITH ORDINALITY AS c(ch, n);
        END IF;
        RETURN body;
    WHEN 'number' THEN
        body := value::text;  -- plain decimal: jsonb writes no exponent
        IF pg_catalog.strpos(body, '.') = 0 THEN
            RETURN body;  -- an integer, as a service reads it
        END IF;
        -- A number with a point: a service reads it as a double. Write that double as Python
        -- writes a float: its shortest text (float8's with extra_float_digits = 1, which
        -- dispatcher_duplicate_key() sets), in plain decimal, with '.0' when it is integral
        -- and below 1e16, as Python writes it.
        IF pg_catalog.length(body) > 308 THEN  -- beyond a double's range, or too small for one
            BEGIN
                double := body::double precision;
            EXCEPTION WHEN numeric_value_out_of_range THEN
                -- Too small: the service reads 0.0. Too large: it refuses the message.
                RETURN CASE WHEN pg_catalog.ltrim(body, '-') LIKE '0.%' THEN '0.0' ELSE body END;
            END;
        ELSE
            double := body::double precision;
        END IF;
        body := double::text::numeric::text;
        IF pg_catalog.strpos(body, '.') > 0 THEN
            RETURN body;
        ELSIF pg_catalog.length(pg_catalog.ltrim(body, '-')) <= 16 THEN
            RETURN body || '.0';
        END IF;
        -- From 2^54 on, float8 may write one digit more than Python (and JavaScript), which
        -- also take a shorter number half-way to the next double when it reads back as this
        -- one (19206977437338648 is 19206977437338650 to Python): look for it.
        number := body::numeric;
        digits := pg_catalog.length(pg_catalog.ltrim(body, '-'));
        FOR kept IN 1 .. pg_catalog.length(pg_catalog.rtrim(pg_catalog.ltrim(body, '-'), '0')) - 1 LOOP
            candidate := pg_catalog.trunc(number, kept - digits);
            FOR step IN 0 .. 1 LOOP
                IF pg_catalog.abs(candidate) <= 1.7976931348623158e308  -- float8 takes it
                        AND candidate::double precision = double THEN
                    RETURN candidate::text;
                END IF;
                candidate := candidate + pg_catalog.sign(number) * pg_catalog.trunc(10::numeric ^ (digits - kept));
            END LOOP;
        END LOOP;
        RETURN body;
    ELSE
        RETURN value::text;  -- true, false, null
    END CASE;
END;
$function$;

CREATE OR REPLACE FUNCTION dispatcher_duplicate_key(task text, args jsonb, kwargs jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE STRICT
SET extra_float_digits = 1  -- once here, not at every level of dispatcher_identity_json()
AS $function$
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
        dispatcher_identity_json(pg_catalog.jsonb_build_array(task, args, kwargs)), 'UTF8'::name)), 'hex')
$function$;

CREATE OR REPLACE FUNCTION dispatcher_enqueue(
    queue text,
    task text,
    args jsonb DEFAULT '[]',
    kwargs jsonb DEFAULT '{}',
    options jsonb DEFAULT '{}',
    queue_schema text DEFAULT 'dispatcher'
) RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $function$
DECLARE
    task_id text;
    message jsonb;
    attempts integer := 3;
    delay_seconds double precision := 0;
    mode text;
    key text;
    stored integer;
    unknown text;
    unreadable text;
    seconds numeric;
    count numeric;
    option_name text;
BEGIN
    IF queue IS NULL OR queue !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: queue %: not a valid channel name (1-63 bytes of ASCII letters, digits, ''_'', ''.'', ''-'' or '':'')',
            pg_catalog.left(pg_catalog.quote_nullable(queue), 40) || CASE WHEN pg_catalog.length(pg_catalog.quote_nullable(queue)) > 40 THEN '... (' || pg_catalog.length(pg_catalog.quote_nullable(queue)) || ' characters)' ELSE '' END;
    END IF;
    IF task IS NULL OR pg_catalog.length(task) > 255 OR task !~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: task %: not a valid task name (dotted Python identifiers in ASCII, at most 255 characters)',
            pg_catalog.left(pg_catalog.quote_nullable(task), 40) || CASE WHEN pg_catalog.length(pg_catalog.quote_nullable(task)) > 40 THEN '... (' || pg_catalog.length(pg_catalog.quote_nullable(task)) || ' characters)' ELSE '' END;
    END IF;
    IF args IS NULL OR pg_catalog.jsonb_typeof(args) <> 'array' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: args must be a JSON array, got %', coalesce(pg_catalog.jsonb_typeof(args), 'NULL');
    END IF;
    IF kwargs IS NULL OR pg_catalog.jsonb_typeof(kwargs) <> 'object' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: kwargs must be a JSON object, got %', coalesce(pg_catalog.jsonb_typeof(kwargs), 'NULL');
    END IF;
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options must be a JSON object, got %', coalesce(pg_catalog.jsonb_typeof(options), 'NULL');
    END IF;
    IF queue_schema IS NULL OR queue_schema !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: queue_schema %: not a valid PostgreSQL identifier (a lower-case letter or ''_'', then up to 62 lower-case letters, digits or ''_'')',
            pg_catalog.left(pg_catalog.quote_nullable(queue_schema), 40) || CASE WHEN pg_catalog.length(pg_catalog.quote_nullable(queue_schema)) > 40 THEN '... (' || pg_catalog.length(pg_catalog.quote_nullable(queue_schema)) || ' characters)' ELSE '' END;
    END IF;
    SELECT pg_catalog.string_agg(k, ', ' ORDER BY k) INTO unknown FROM pg_catalog.jsonb_object_keys(options) AS k
        WHERE k NOT IN ('timeout', 'delay', 'on_duplicate', 'bind', 'uuid', 'guid', 'max_attempts');
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options: unknown key(s) % (expected: timeout, delay, on_duplicate, bind, uuid, guid, max_attempts)', unknown;
    END IF;
    -- A refused value is shown cut to 40 characters, and its length: a number may have a
    -- hundred thousand digits, a string megabytes.
    FOREACH option_name IN ARRAY ARRAY['timeout', 'delay'] LOOP
        IF options ? option_name THEN
            IF pg_catalog.jsonb_typeof(options -> option_name) <> 'number' THEN
                RAISE EXCEPTION 'dispatcher_enqueue: options.%: expected a number of seconds, got %', option_name,
                    pg_catalog.left((options -> option_name)::text, 40) || CASE WHEN pg_catalog.length((options -> option_name)::text) > 40 THEN '... (' || pg_catalog.length((options -> option_name)::text) || ' characters)' ELSE '' END;
            END IF;
            seconds := (options ->> option_name)::numeric;
            IF seconds < 0 OR seconds > 31536000 THEN
                RAISE EXCEPTION 'dispatcher_enqueue: options.%: must be between 0 and 31536000 seconds, got %', option_name,
                    pg_catalog.left((options -> option_name)::text, 40) || CASE WHEN pg_catalog.length((options -> option_name)::text) > 40 THEN '... (' || pg_catalog.length((options -> option_name)::text) || ' characters)' ELSE '' END;
            END IF;
        END IF;
    END LOOP;
    IF options ? 'on_duplicate' AND (options ->> 'on_duplicate') NOT IN ('parallel', 'discard', 'serial', 'queue_one')
        OR options ? 'on_duplicate' AND pg_catalog.jsonb_typeof(options -> 'on_duplicate') <> 'string' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options.on_duplicate: % is not one of parallel, discard, serial, queue_one',
            pg_catalog.left((options -> 'on_duplicate')::text, 40) || CASE WHEN pg_catalog.length((options -> 'on_duplicate')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'on_duplicate')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'bind' AND pg_catalog.jsonb_typeof(options -> 'bind') <> 'boolean' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options.bind: expected true or false, got %',
            pg_catalog.left((options -> 'bind')::text, 40) || CASE WHEN pg_catalog.length((options -> 'bind')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'bind')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'uuid' AND (pg_catalog.jsonb_typeof(options -> 'uuid') <> 'string' OR pg_catalog.length(options ->> 'uuid') NOT BETWEEN 1 AND 255) THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options.uuid: expected a string of 1 to 255 characters, got %',
            pg_catalog.left((options -> 'uuid')::text, 40) || CASE WHEN pg_catalog.length((options -> 'uuid')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'uuid')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'guid' AND pg_catalog.jsonb_typeof(options -> 'guid') <> 'string' THEN
        RAISE EXCEPTION 'dispatcher_enqueue: options.guid: expected a string, got %',
            pg_catalog.left((options -> 'guid')::text, 40) || CASE WHEN pg_catalog.length((options -> 'guid')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'guid')::text) || ' characters)' ELSE '' END;
    END IF;
    IF options ? 'max_attempts' THEN
        -- An integral number, as JSON Schema counts integers: 3.0 is 3.
        IF pg_catalog.jsonb_typeof(options -> 'max_attempts') = 'number' THEN
            count := (options ->> 'max_attempts')::numeric;
        END IF;
        IF count IS NULL OR count NOT BETWEEN 1 AND 1000 OR count <> pg_catalog.trunc(count) THEN
            RAISE EXCEPTION 'dispatcher_enqueue: options.max_attempts: expected an integer between 1 and 1000, got %',
            pg_catalog.left((options -> 'max_attempts')::text, 40) || CASE WHEN pg_catalog.length((options -> 'max_attempts')::text) > 40 THEN '... (' || pg_catalog.length((options -> 'max_attempts')::text) || ' characters)' ELSE '' END;
        END IF;
        attempts := count::integer;
    END IF;

    -- As services decode messages: at most 64 levels (the message, args or kwargs, then what
    -- they hold), and every number readable.
    IF pg_catalog.jsonb_path_exists(pg_catalog.jsonb_build_array(args, kwargs), 'strict $.**{64} ? (@.type() == "array" || @.type() == "object")'::jsonpath) THEN
        RAISE EXCEPTION 'dispatcher_enqueue: %: nested more than 63 levels deep (a message may nest 64 levels in all, the message itself included)',
            CASE WHEN pg_catalog.jsonb_path_exists(args, 'strict $.**{63} ? (@.type() == "array" || @.type() == "object")'::jsonpath) THEN 'args' ELSE 'kwargs' END;
    END IF;
    -- Only a number of 1e308 or more in magnitude may be unreadable: one path query tells
    -- whether there is any, several times faster than a check of each number.
    IF pg_catalog.jsonb_path_exists(pg_catalog.jsonb_build_array(args, kwargs), 'strict $.** ? (@.type() == "number" && (@ >= 1e308 || @ <= -1e308))'::jsonpath) THEN
        unreadable := coalesce(dispatcher_unreadable_path(args, 'args'::text), dispatcher_unreadable_path(kwargs, 'kwargs'::text));
        IF unreadable IS NOT NULL THEN
            RAISE EXCEPTION 'dispatcher_enqueue: %', unreadable;
        END IF;
    END IF;

    task_id := coalesce(options ->> 'uuid', pg_catalog.gen_random_uuid()::text);
    message := pg_catalog.jsonb_build_object(
        'task', task,
        'uuid', task_id,
        'args', args,
        'kwargs', kwargs,
        'time_pub', extract(epoch FROM pg_catalog.clock_timestamp())
    ) || (options - 'uuid' - 'max_attempts');
    IF pg_catalog.octet_length(message::text) > 8388608 THEN
        RAISE EXCEPTION 'dispatcher_enqueue: the message is % bytes of JSON, over the limit of 8388608 (8 MiB) that services take', pg_catalog.octet_length(message::text);
    END IF;
    IF options ? 'delay' THEN
        -- To the microsecond, as timestamps hold it (1e-400 is no double: it is 0).
        delay_seconds := pg_catalog.round((options ->> 'delay')::numeric, 6)::double precision;
    END IF;
    mode := nullif(options ->> 'on_duplicate', 'parallel');
    IF mode IS NOT NULL THEN
        key := dispatcher_duplicate_key(task, args, kwargs);
    END IF;

    IF pg_catalog.to_regclass(pg_catalog.format('%I.jobs', queue_schema)) IS NULL THEN
        RAISE EXCEPTION 'dispatcher_enqueue: the durable queue''s tables are missing from schema %', pg_catalog.quote_ident(queue_schema)
            USING HINT = 'Run `dispatcherctl migrate`, or pass the schema of brokers.pg_queue as queue_schema.';
    END IF;
    EXECUTE pg_catalog.format(
        'INSERT INTO %I.jobs (uuid, queue, task, message, max_attempts, created_at, run_after,'
        ' on_duplicate, dup_key) VALUES ($1, $2, $3, $4, $5, $9,'
        ' $9 + pg_catalog.make_interval(secs => $6), $7, $8)'
        ' ON CONFLICT DO NOTHING',
        queue_schema)
        -- The time of the call (a trigger may call it late in a long statement).
        USING task_id, queue, task, message::text, attempts, delay_seconds, mode, key,
            pg_catalog.clock_timestamp();
    GET DIAGNOSTICS stored = ROW_COUNT;
    -- The wake-up is a hint (the services poll): not while the NOTIFY queue is half full
    -- or more, where it could fail the caller's transaction at COMMIT, the job with it.
    IF stored > 0 AND pg_catalog.pg_notification_queue_usage() < 0.5 THEN
        PERFORM pg_catalog.pg_notify('dispatcher_queue_wakeup', queue);
    END IF;
    RETURN task_id;
END;
$function$;

COMMENT ON FUNCTION dispatcher_enqueue(text, text, jsonb, jsonb, jsonb, text) IS
    'Store a dispatcher task as a job of a durable queue (pg_queue) and wake the services; returns its uuid.';

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
        'dispatcher_duplicate_key(text, jsonb, jsonb)',
        'dispatcher_enqueue(text, text, jsonb, jsonb, jsonb, text)'
    ] LOOP
        EXECUTE pg_catalog.format(
            'ALTER FUNCTION %1$I.%2$s SET search_path = pg_catalog, %1$I, pg_temp',
            pg_catalog.current_schema(), signature);
    END LOOP;
END
$search_path$;
