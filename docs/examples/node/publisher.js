// Publish a dispatcher task from Node.js, with nothing but the JSON Schemas of the wire format.
//
//   DISPATCHER_DSN=postgres://postgres@127.0.0.1/postgres \
//     node publisher.js <channel> <task> '[args as JSON]' '{kwargs as JSON}'
//
// The message is validated against schemas/task-message.schema.json before it is sent, so a
// bad message fails here, with the reason, instead of being rejected by the service.
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

export function loadValidator(name) {
  const schema = JSON.parse(readFileSync(join(SCHEMAS, `${name}.schema.json`), "utf8"));
  return new Ajv2020({ allErrors: true }).compile(schema);
}

export function buildMessage(task, args = [], kwargs = {}, options = {}) {
  return { task, uuid: randomUUID(), args, kwargs, time_pub: Date.now() / 1000, ...options };
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

export async function submit(client, channel, message, key = signingKeyFromEnv()) {
  const validate = loadValidator("task-message");
  if (!validate(message)) {
    const reasons = validate.errors.map((e) => `${e.instancePath || "(root)"} ${e.message}`).join("; ");
    throw new Error(`invalid task message: ${reasons}`);
  }
  const body = JSON.stringify(message);
  const text = key ? signEnvelope(body, key.id, key.secret) : body;
  if (Buffer.byteLength(text, "utf8") > MAX_NOTIFY_BYTES) {
    throw new Error("message too large for one NOTIFY; this example does not chunk");
  }
  await client.query("SELECT pg_notify($1, $2)", [channel, text]);
  return message.uuid;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [channel, task, args = "[]", kwargs = "{}"] = process.argv.slice(2);
  const client = new pg.Client({ connectionString: process.env.DISPATCHER_DSN });
  await client.connect();
  try {
    const key = signingKeyFromEnv();
    const uuid = await submit(client, channel, buildMessage(task, JSON.parse(args), JSON.parse(kwargs)), key);
    console.log(`submitted ${task} as ${uuid}${key ? ` (signed with key ${key.id})` : ""}`);
  } finally {
    await client.end();
  }
}
