// Store a dispatcher task as a job of a durable queue (the pg_queue broker) from Node.js.
//
//   DISPATCHER_DSN=postgres://postgres@127.0.0.1/postgres \
//     node enqueue.js <queue> <task> '[args as JSON]' '{kwargs as JSON}' '{options as JSON}'
//
// Options: timeout, delay, on_duplicate, bind, guid (they go in the message, which is
// validated against schemas/task-message.schema.json first), max_attempts (1-1000, default
// 3: it goes in the row, not in the message). DISPATCHER_QUEUE_SCHEMA names the schema of
// the tables (brokers.pg_queue.schema, default "dispatcher").
//
// One statement inserts the row and NOTIFYs dispatcher_queue_wakeup with the queue's name
// (unless the server's NOTIFY queue is half full or more: the services poll):
// inside a transaction of yours (BEGIN ... COMMIT on the same client), the job exists once it
// commits, never if it rolls back. The row is not signed (signing protects NOTIFY payloads);
// the queue must be listed under brokers.pg_queue.queues, or no service claims the job.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { buildMessage, checkChannelName, checkMessage, parseArgument, runCommand } from "./publisher.js";

const WAKEUP_CHANNEL = "dispatcher_queue_wakeup";
const TRACKED = new Set(["discard", "serial", "queue_one"]);

// Python's json.dumps(value, sort_keys=True, separators=(",", ":")): keys in code point
// order, no spaces, every character outside printable ASCII as a \uXXXX escape.
function codePointOrder(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

function asciiString(text) {
  return JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
}

export function identityJson(value) {
  if (Array.isArray(value)) return `[${value.map(identityJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value).sort(codePointOrder);
    return `{${keys.map((k) => `${asciiString(k)}:${identityJson(value[k])}`).join(",")}}`;
  }
  if (typeof value === "string") return asciiString(value);
  if (typeof value === "number") return canonicalNumber(value);
  return JSON.stringify(value);
}

// A number in the canonical form of duplicate keys (docs/durable-queues.md): its shortest
// text, as String() writes it, in plain decimal with no sign on zero. String(1e21) is
// "1e+21", String(1e-7) "1e-7": both are written out in full. JavaScript cannot tell 1 from
// 1.0, so an integral number is written as an integer (Python writes its float 1.0).
export function canonicalNumber(n) {
  const text = String(n);
  const match = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(text);
  if (!match) return text === "-0" ? "0" : text;
  const [, sign, whole, fraction = "", exponent] = match;
  const digits = whole + fraction;
  const point = whole.length + Number(exponent); // digits before the decimal point
  let plain;
  if (point <= 0) plain = `0.${"0".repeat(-point)}${digits}`;
  else if (point >= digits.length) plain = digits + "0".repeat(point - digits.length);
  else plain = `${digits.slice(0, point)}.${digits.slice(point)}`;
  plain = plain.replace(/^0+(?=\d)/, "");
  return /[1-9]/.test(plain) ? sign + plain : plain;
}

// The job's dup_key: hex SHA-256 of the identity of [task, args, kwargs], as
// dispatcher.schema.duplicate_key() and dispatcher_duplicate_key() compute it.
export function duplicateKey(task, args, kwargs) {
  return createHash("sha256").update(identityJson([task, args, kwargs]), "ascii").digest("hex");
}

export async function enqueue(client, queue, task, args = [], kwargs = {}, options = {}, schema = "dispatcher") {
  checkChannelName(queue, "queue");
  const { max_attempts: maxAttempts = 3, ...messageOptions } = options;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1 || maxAttempts > 1000) {
    throw new Error(`max_attempts: expected an integer between 1 and 1000, got ${JSON.stringify(maxAttempts)}`);
  }
  const message = buildMessage(task, args, kwargs, messageOptions);
  checkMessage(message); // the uuid, queue and task columns hold what it checks
  const mode = TRACKED.has(message.on_duplicate) ? message.on_duplicate : null;
  await client.query(
    `WITH stored AS (INSERT INTO ${client.escapeIdentifier(schema)}.jobs` +
      " (uuid, queue, task, message, max_attempts, created_at, run_after, on_duplicate, dup_key)" +
      // statement_timestamp(), not now(): a delay counts from this statement, not from the
      // start of the caller's transaction.
      " VALUES ($1, $2, $3, $4, $5, statement_timestamp()," +
      " statement_timestamp() + make_interval(secs => $6), $7, $8)" +
      " ON CONFLICT DO NOTHING RETURNING queue)" +
      ` SELECT pg_notify('${WAKEUP_CHANNEL}', queue) FROM stored` +
      // The wake-up is a hint (the services poll): not while the server's NOTIFY queue is
      // half full or more, where it would fail the transaction at COMMIT, the job with it.
      " WHERE pg_notification_queue_usage() < 0.5",
    [
      message.uuid,
      queue,
      task,
      JSON.stringify(message),
      maxAttempts,
      message.delay ?? 0,
      mode,
      mode ? duplicateKey(task, args, kwargs) : null,
    ],
  );
  return message.uuid;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await runCommand("enqueue.js", async () => {
    const [queue, task, args = "[]", kwargs = "{}", options = "{}"] = process.argv.slice(2);
    const parsed = [parseArgument("args", args), parseArgument("kwargs", kwargs), parseArgument("options", options)];
    checkChannelName(queue, "queue");
    const schema = process.env.DISPATCHER_QUEUE_SCHEMA ?? "dispatcher";
    const client = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });
    await client.connect();
    try {
      const uuid = await enqueue(client, queue, task, ...parsed, schema);
      console.log(`enqueued ${task} as ${uuid}`);
    } finally {
      await client.end();
    }
  });
}
