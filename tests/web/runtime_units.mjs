// Runs pieces of the page's runtime (llm_deploy/web/runtime, the files the browser loads) under
// Node on inputs from stdin, printing what they compute, for test_runtime_js.py to hold against
// the Python runtime: {"exprs": [[text, env]], "kv": {"config", "ops"}, "safetensors": base64}.
import { readFileSync } from "node:fs";

const runtime = (name) => import(new URL(`../../llm_deploy/web/runtime/${name}`, import.meta.url));
const { compileExpr } = await runtime("symbolic.js");
const { PagedKVCache } = await runtime("kv_cache.js");
const { parseSafetensors } = await runtime("safetensors.js");
const input = JSON.parse(readFileSync(0, "utf8"));

const exprs = input.exprs.map(([text, env]) => {
  try {
    return compileExpr(text)(env);
  } catch (e) {
    return `error: ${e.message}`;
  }
});

// A cache whose device is never asked for memory (pools are made on first use by the kernels).
const cache = new PagedKVCache(null, input.kv.config);
const steps = [];
for (const [op, ...args] of input.kv.ops) {
  if (op === "add") cache.addSequence(args[0]);
  else if (op === "popn") cache.popn(...args);
  else if (op === "remove") cache.removeSequence(args[0]);
  else {
    const s = cache.beginForward(...args);
    steps.push({
      positions: [...s.positions], appendSlots: [...s.appendSlots].filter((_, i) => i % 2 === 0),
      tokenSeq: [...s.tokenSeq], pageIndptr: [...s.pageIndptr], pageIndices: [...s.pageIndices],
      lastTokenIndices: [...s.lastTokenIndices],
    });
    cache.endForward();
  }
}

const bytes = Buffer.from(input.safetensors, "base64");
const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
const tensors = Object.fromEntries(
  Object.entries(parseSafetensors(buffer)).map(([k, t]) => [k, { dtype: t.dtype, shape: t.shape, hex: Buffer.from(t.bytes).toString("hex") }]),
);
console.log(JSON.stringify({ exprs, steps, tensors }));
