// Symbolic shape expressions of a VM program (`2 * n + (m // 4)`, `min(n, 16)`), compiled once
// into closures over an environment of bound values. Integer arithmetic only, with Python's
// floor division and modulo (the compiler writes them), so a manifest never runs code.

export class SymbolicError extends Error {}

const floorDiv = (a, b) => Math.floor(a / b);
const pyMod = (a, b) => a - b * Math.floor(a / b);
const BINOPS = { "+": (a, b) => a + b, "-": (a, b) => a - b, "*": (a, b) => a * b, "//": floorDiv, "%": pyMod };
const CALLS = { min: Math.min, max: Math.max };

function tokenize(text) {
  const tokens = [];
  const re = /\s*(\d+|[A-Za-z_][A-Za-z_0-9]*|\/\/|[-+*%(),])/y;
  let m;
  while (re.lastIndex < text.length && (m = re.exec(text))) tokens.push(m[1]);
  if (re.lastIndex < text.trimEnd().length) throw new SymbolicError(`bad symbolic expression ${JSON.stringify(text)}`);
  return tokens;
}

/** A closure computing `text` (a string or a number) from an object of bound values. */
export function compileExpr(text) {
  if (typeof text === "number") return () => text;
  const tokens = tokenize(String(text));
  let i = 0;
  const fail = () => { throw new SymbolicError(`not an integer shape expression: ${JSON.stringify(text)}`); };
  const expect = (t) => (tokens[i] === t ? i++ : fail());
  function atom() {
    const t = tokens[i++];
    if (t === undefined) fail();
    if (t === "-") { const x = atom(); return (env) => -x(env); }
    if (t === "(") { const x = sum(); expect(")"); return x; }
    if (/^\d+$/.test(t)) { const v = Number(t); return () => v; }
    if (t in CALLS && tokens[i] === "(") {
      i++;
      const a = sum(); expect(","); const b = sum(); expect(")");
      const fn = CALLS[t];
      return (env) => fn(a(env), b(env));
    }
    if (/^[A-Za-z_]/.test(t)) {
      return (env) => {
        const v = env[t];
        if (v === undefined) throw new SymbolicError(`symbolic variable '${t}' is not bound (in ${JSON.stringify(text)})`);
        return v;
      };
    }
    return fail();
  }
  function binary(next, ops) {
    return () => {
      let left = next();
      while (ops.includes(tokens[i])) {
        const fn = BINOPS[tokens[i++]], a = left, b = next();
        left = (env) => fn(a(env), b(env));
      }
      return left;
    };
  }
  const product = binary(atom, ["*", "//", "%"]);
  const sum = binary(product, ["+", "-"]);
  const expr = sum();
  if (i !== tokens.length) fail();
  return expr;
}
