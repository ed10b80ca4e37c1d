// Publish a dispatcher task from Node.js, with nothing but the JSON Schemas of the wire format.
//
//   DISPATCHER_DSN=postgres://postgres@127.0.0.1/postgres \
//     node publisher.js <channel> <task> '[args as JSON]' '{kwargs as JSON}'
//
// The message is validated against schemas/task-message.schema.json before it is sent, so a
// bad message fails here, with the reason, instead of being rejected by the service.
import { randomUUID } from "node:crypto";
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

export async function submit(client, channel, message) {
  const validate = loadValidator("task-message");
  if (!validate(message)) {
    const reasons = validate.errors.map((e) => `${e.instancePath || "(root)"} ${e.message}`).join("; ");
    throw new Error(`invalid task message: ${reasons}`);
  }
  const text = JSON.stringify(message);
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
    const uuid = await submit(client, channel, buildMessage(task, JSON.parse(args), JSON.parse(kwargs)));
    console.log(`submitted ${task} as ${uuid}`);
  } finally {
    await client.end();
  }
}
