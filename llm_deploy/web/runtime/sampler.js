// Choosing the next token from a row of logits, as llm_deploy/serve/sampler.py does for the
// parameters the page offers: temperature 0 is greedy (argmax, first of equals, as numpy);
// otherwise softmax(logits / T), the smallest set of tokens whose probability reaches top_p,
// and a draw from it with the request's own generator (seeded: the same seed, the same draw).

/** A seeded generator of floats in [0, 1) (mulberry32); unseeded requests use Math.random. */
export function generator(seed) {
  if (seed === undefined || seed === null) return Math.random;
  let a = Number(seed) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

export function sample(row, { temperature = 1, top_p = 1 }, rng = Math.random) {
  for (let i = 0; i < row.length; i++) {
    if (Number.isNaN(row[i])) throw new Error(`the model produced NaN logits (token ${i}): cannot sample`);
  }
  if (temperature === 0) return argmax(row);
  const max = row[argmax(row)];
  const probs = Float64Array.from(row, (x) => Math.exp((x - max) / temperature));
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a] || a - b);
  const total = probs.reduce((a, b) => a + b, 0);
  // keep tokens while the mass before them is below top_p (the first is always kept)
  let kept = 0, mass = 0;
  while (kept < order.length && (kept === 0 || mass < top_p * total)) mass += probs[order[kept++]];
  let r = rng() * mass;
  for (let i = 0; i < kept; i++) {
    r -= probs[order[i]];
    if (r < 0) return order[i];
  }
  return order[kept - 1];
}
