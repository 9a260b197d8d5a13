// The paged KV cache in the page: per-layer K/V pools in GPU buffers (written only by the
// attention kernels) and the page table on the host, as llm_deploy/kv_cache/paged.py keeps it.
// A step is two-phase: beginForward allocates pages and builds the step arrays the kernels read
// (see kv_cache/step.py), the model runs, endForward commits the lengths (cancelForward drops
// the step's pages). Sequences are not forked here (one visitor, one conversation), so pages
// are never shared and need no reference counts.

export class KVCacheError extends Error {}

const MIN_PADDED_PAGES = 16;

export class PagedKVCache {
  constructor(device, { numLayers, numKvHeads, headDim, pageSize, numPages, dtype }) {
    Object.assign(this, { device, numLayers, numKvHeads, headDim, pageSize, numPages, dtype });
    this.free = Array.from({ length: numPages }, (_, i) => numPages - 1 - i); // pop() hands out page 0 first
    this.seqs = new Map(); // id -> {length, pages}
    this.step = null;
    this.pools = []; // per layer [k, v], created on first use
  }

  addSequence(id) {
    if (this.seqs.has(id)) throw new KVCacheError(`sequence ${id} is already in the cache`);
    this.seqs.set(id, { length: 0, pages: [] });
  }

  removeSequence(id) {
    const seq = this.get(id);
    this.free.push(...seq.pages);
    this.seqs.delete(id);
  }

  /** Roll back the last n tokens of a sequence (pages left empty are freed). */
  popn(id, n) {
    const seq = this.get(id);
    if (n < 0 || n > seq.length) throw new KVCacheError(`popn: cannot remove ${n} tokens from sequence ${id} of length ${seq.length}`);
    seq.length -= n;
    this.trim(seq);
  }

  seqLength(id) {
    return this.get(id).length;
  }

  get(id) {
    const seq = this.seqs.get(id);
    if (!seq) throw new KVCacheError(`unknown sequence id ${id}; sequences in the cache: ${[...this.seqs.keys()].join(", ") || "none"}`);
    return seq;
  }

  trim(seq) {
    const keep = Math.ceil(seq.length / this.pageSize);
    this.free.push(...seq.pages.splice(keep));
  }

  beginForward(ids, lengths) {
    if (this.step) throw new KVCacheError("a forward step is in progress");
    const seqs = ids.map((id) => this.get(id));
    const needed = seqs.reduce((s, seq, i) => s + Math.ceil((seq.length + lengths[i]) / this.pageSize) - seq.pages.length, 0);
    if (needed > this.free.length) {
      throw new KVCacheError(`the KV cache is full: ${needed} pages needed, ${this.free.length} free (the conversation exceeds the context window)`);
    }
    seqs.forEach((seq, i) => {
      while (seq.pages.length * this.pageSize < seq.length + lengths[i]) seq.pages.push(this.free.pop());
    });
    const n = lengths.reduce((a, b) => a + b, 0);
    const positions = new Int32Array(n), tokenSeq = new Int32Array(n);
    const appendSlots = new Int32Array(2 * n); // int64 little-endian: low word, high word (0)
    const pageIndptr = new Int32Array(ids.length + 1);
    // Padded with zeros to a power of two (at least 16), as kv_cache/step.py pads it: kernels read
    // it only through page_indptr, and a length that rarely changes keeps plans and bind groups.
    const total = seqs.reduce((s, seq) => s + seq.pages.length, 0);
    const pageIndices = new Int32Array(Math.max(MIN_PADDED_PAGES, 2 ** Math.ceil(Math.log2(Math.max(total, 1)))));
    const lastTokenIndices = new Int32Array(ids.length);
    let t = 0;
    seqs.forEach((seq, i) => {
      pageIndices.set(seq.pages, pageIndptr[i]);
      pageIndptr[i + 1] = pageIndptr[i] + seq.pages.length;
      for (let j = 0; j < lengths[i]; j++, t++) {
        const pos = seq.length + j;
        positions[t] = pos;
        tokenSeq[t] = i;
        appendSlots[2 * t] = seq.pages[Math.floor(pos / this.pageSize)] * this.pageSize + (pos % this.pageSize);
      }
      lastTokenIndices[i] = t - 1;
    });
    this.step = { ids, lengths, numTokens: n, positions, appendSlots, tokenSeq, pageIndptr, pageIndices, lastTokenIndices };
    return this.step;
  }

  endForward() {
    const step = this.current();
    step.ids.forEach((id, i) => { this.get(id).length += step.lengths[i]; });
    this.step = null;
  }

  cancelForward() {
    const step = this.current();
    for (const id of step.ids) this.trim(this.get(id));
    this.step = null;
  }

  current() {
    if (!this.step) throw new KVCacheError("no forward step in progress: call beginForward first");
    return this.step;
  }

  layerPools(layer) {
    if (!(layer >= 0 && layer < this.numLayers)) throw new KVCacheError(`kv_cache.layer_pools: layer ${layer} out of range for a ${this.numLayers}-layer cache`);
    if (!this.pools[layer]) {
      const shape = [this.numPages, this.pageSize, this.numKvHeads, this.headDim];
      this.pools[layer] = [0, 1].map(() => this.device.persistent(shape, this.dtype, `the KV cache pool of layer ${layer}`));
    }
    return this.pools[layer];
  }
}

/** The KV cache's library functions as the VM calls them (names from kv_cache/externs.py). */
export function kvExterns(device) {
  return {
    // value externs: fn(*args) -> value
    "kv_cache.step_arrays": (cache) => {
      const s = cache.current();
      const n = s.numTokens;
      return [
        device.upload([n], "int32", s.positions),
        device.upload([n], "int64", s.appendSlots),
        device.upload([n], "int32", s.tokenSeq),
        device.upload([s.pageIndptr.length], "int32", s.pageIndptr),
        device.upload([s.pageIndices.length], "int32", s.pageIndices),
      ];
    },
    "kv_cache.layer_pools": (cache, layer) => cache.layerPools(Number(layer)),
    // destination-passing: fn(*inputs, *outputs)
    "kv_cache.positions": (cache, ids, out) => {
      const s = cache.current();
      if (ids.shape[0] !== s.numTokens) throw new KVCacheError(`kv_cache.positions: the step has ${s.numTokens} new tokens, the model was given ${ids.shape[0]} token ids`);
      device.writeInStream(out, s.positions);
    },
  };
}
