// Publish a dispatcher task from Node.js, with nothing but the JSON Schemas of the wire format.
//
//   DISPATCHER_DSN=postgres://postgres@127.0.0.1/postgres \
//     node publisher.js <channel> <task> '[args as JSON]' '{kwargs as JSON}'
//
// The message is checked before it is sent, so a bad message fails here, with its place and
// the reason, instead of being rejected by the service: against
// schemas/task-message.schema.json, then for what JSON.stringify would change or a service
// cannot read: anything but plain objects, arrays, strings, finite numbers, booleans and
// null (JSON.stringify writes undefined, a function, NaN or an infinity as null, a Map or a
// Uint8Array as an object of other keys, and throws at a BigInt); a hole in an array;
// arrays and objects nested more than 64 levels in all, the message itself included; a
// uuid holding a NUL character or a lone surrogate, which PostgreSQL text cannot hold; a
// channel name no service can listen on.
//
// With DISPATCHER_SIGNING_KEY_ID and DISPATCHER_SIGNING_SECRET set (a key of the services'
// security.keys), the message is sent in a signed envelope (schemas/signed-envelope.schema.json).
import { createHmac, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";
import pg from "pg";

const SCHEMAS = process.env.DISPATCHER_SCHEMAS ?? join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "schemas");
const MAX_NOTIFY_BYTES = 7999;
export const MAX_NESTING_DEPTH = 64; // as services decode: the message itself is level 1
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

// As services check the channels they listen on: PostgreSQL also takes "a b" or "café",
// but no service listens there, and a message sent to one reaches no one.
const CHANNEL_NAME = /^[A-Za-z0-9_.:-]{1,63}$/;

// Throw, naming the argument, unless *name* is a channel a service can listen on.
export function checkChannelName(name, argument = "channel") {
  if (typeof name !== "string" || !CHANNEL_NAME.test(name)) {
    const rule = "1-63 bytes of ASCII letters, digits, '_', '.', '-' or ':'";
    throw new Error(`${argument} ${JSON.stringify(name)}: not a valid channel name (${rule})`);
  }
}

export function loadValidator(name) {
  const schema = JSON.parse(readFileSync(join(SCHEMAS, `${name}.schema.json`), "utf8"));
  return new Ajv2020({ allErrors: true }).compile(schema);
}

function place(path, key) {
  if (typeof key === "number") return `${path}[${key}]`;
  if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return path ? `${path}.${key}` : key;
  return `${path}[${JSON.stringify(key)}]`;
}

// Why a text cannot be stored in a PostgreSQL text column, or null.
export function unstorableText(text) {
  const nul = text.indexOf("\u0000");
  if (nul >= 0) return `${JSON.stringify(text)} holds a NUL character at index ${nul}, which PostgreSQL text cannot hold`;
  const lone = LONE_SURROGATE.exec(text);
  if (lone) {
    const code = lone[0].charCodeAt(0).toString(16).padStart(4, "0");
    return `${JSON.stringify(text)} holds the lone surrogate \\u${code} at index ${lone.index}, which UTF-8 cannot encode`;
  }
  return null;
}

// What a value is, for a reason: "a function", "a Map", "undefined".
function kind(value) {
  if (value === undefined) return "undefined";
  if (typeof value !== "object") return `a ${typeof value}`;
  const name = value.constructor?.name;
  return name ? `a ${name}` : "an object with a prototype of its own";
}

function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

// "<place>: <reason>" for the first value a service would not get as it is, or null: only
// plain objects, arrays, strings, finite numbers, booleans and null go through
// JSON.stringify unchanged (undefined, functions and symbols become null or vanish, a Map,
// a Set or a typed array becomes an object of other keys, a BigInt makes it throw).
export function unsendable(value, path = "", depth = 1) {
  if (typeof value === "number") return Number.isFinite(value) ? null : `${path}: ${value} is not valid in JSON`;
  if (value === null || typeof value === "string" || typeof value === "boolean") return null;
  const where = path || "(the message)";
  if (typeof value !== "object" || !(Array.isArray(value) || isPlainObject(value))) {
    return `${where}: ${kind(value)} is not valid in JSON (send plain objects, arrays, strings, finite numbers, booleans and null)`;
  }
  if (depth > MAX_NESTING_DEPTH) {
    return `${where}: nested too deeply, or contains itself (a message may nest ${MAX_NESTING_DEPTH} levels in all)`;
  }
  if (Object.getOwnPropertySymbols(value).length > 0) {
    return `${where}: has a Symbol key, which JSON.stringify drops`;
  }
  let entries;
  if (Array.isArray(value)) {
    entries = [];
    for (let i = 0; i < value.length; i++) {
      if (!Object.hasOwn(value, i)) return `${place(path, i)}: a hole in a sparse array (JSON.stringify would send null)`;
      entries.push([i, value[i]]);
    }
    if (Object.keys(value).length > value.length) {
      return `${where}: an array with properties other than its items, which JSON.stringify drops`;
    }
  } else {
    entries = Object.entries(value);
  }
  for (const [key, item] of entries) {
    const found = unsendable(item, place(path, key), depth + 1);
    if (found) return found;
  }
  return null;
}

// Throw, naming the place and the reason, unless a service would take the message as it is.
export function checkMessage(message) {
  const validate = loadValidator("task-message");
  if (!validate(message)) {
    const reasons = validate.errors.map((e) => `${e.instancePath || "(root)"} ${e.message}`).join("; ");
    throw new Error(`invalid task message: ${reasons}`);
  }
  const found = unsendable(message);
  if (found) throw new Error(`invalid task message: ${found}`);
  const unstorable = typeof message.uuid === "string" ? unstorableText(message.uuid) : null;
  if (unstorable) throw new Error(`invalid task message: uuid: ${unstorable}`);
}

// An option left undefined is not given: the message keeps its new uuid, for instance.
export function buildMessage(task, args = [], kwargs = {}, options = {}) {
  const given = Object.entries(options).filter(([, value]) => value !== undefined);
  return { task, uuid: randomUUID(), args, kwargs, time_pub: Date.now() / 1000, ...Object.fromEntries(given) };
}

// signature = hex(HMAC-SHA256(secret, signed_at + "." + body)), over UTF-8 bytes.
export function signEnvelope(body, keyId, secret, signedAt = (Date.now() / 1000).toFixed(6)) {
  const signature = createHmac("sha256", Buffer.from(secret, "utf8"))
    .update(`${signedAt}.${body}`, "utf8")
    .digest("hex");
  return JSON.stringify({ __dispatcher_signed__: "v1", key_id: keyId, signed_at: signedAt, signature, body });
}

export function signingKeyFromEnv(env = process.env) {
  const id = env.DISPATCHER_SIGNING_KEY_ID;
  const secret = env.DISPATCHER_SIGNING_SECRET;
  if (!id && !secret) return null;
  if (!id || !secret) throw new Error("set both DISPATCHER_SIGNING_KEY_ID and DISPATCHER_SIGNING_SECRET, or neither");
  return { id, secret };
}

// Send the message; return its uuid (a new one, added to what is sent, when it has none).
export async function submit(client, channel, message, key = signingKeyFromEnv()) {
  checkChannelName(channel);
  if (message.uuid === undefined) message = { ...message, uuid: randomUUID() };
  checkMessage(message);
  const body = JSON.stringify(message);
  const text = key ? signEnvelope(body, key.id, key.secret) : body;
  if (Buffer.byteLength(text, "utf8") > MAX_NOTIFY_BYTES) {
    throw new Error("message too large for one NOTIFY; this example does not chunk");
  }
  await client.query("SELECT pg_notify($1, $2)", [channel, text]);
  return message.uuid;
}

// The JSON in an argument of a command line, or an error naming the argument.
export function parseArgument(name, text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${name}: not JSON: ${error.message}`);
  }
}

// Run a command line's *main*; a refusal is one line on stderr and exit status 1, no stack.
export async function runCommand(script, main) {
  try {
    await main();
  } catch (error) {
    console.error(`${script}: ${error.message}`.replace(/\n/g, " "));
    process.exitCode = 1;
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await runCommand("publisher.js", async () => {
    const [channel, task, args = "[]", kwargs = "{}"] = process.argv.slice(2);
    const message = buildMessage(task, parseArgument("args", args), parseArgument("kwargs", kwargs));
    checkChannelName(channel);
    const key = signingKeyFromEnv();
    const client = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });
    await client.connect();
    try {
      const uuid = await submit(client, channel, message, key);
      console.log(`submitted ${task} as ${uuid}${key ? ` (signed with key ${key.id})` : ""}`);
    } finally {
      await client.end();
    }
  });
}
