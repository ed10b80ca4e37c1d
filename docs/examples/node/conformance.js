// Run every conformance example in schemas/examples/ through ajv; print the results as JSON:
// {"<schema>/<valid|invalid>/<file>": {"valid": bool, "paths": [instance paths of errors]}}
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadValidator } from "./publisher.js";

const SCHEMAS = process.env.DISPATCHER_SCHEMAS;
const results = {};
for (const schema of readdirSync(join(SCHEMAS, "examples"))) {
  const folder = join(SCHEMAS, "examples", schema);
  if (schema.endsWith(".json")) continue;
  const validate = loadValidator(schema);
  for (const kind of ["valid", "invalid"]) {
    for (const file of readdirSync(join(folder, kind))) {
      const instance = JSON.parse(readFileSync(join(folder, kind, file), "utf8"));
      const valid = validate(instance);
      results[`${schema}/${kind}/${file}`] = { valid, paths: valid ? [] : validate.errors.map((e) => e.instancePath) };
    }
  }
}
console.log(JSON.stringify(results));
