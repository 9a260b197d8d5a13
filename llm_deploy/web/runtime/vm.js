// The virtual machine in the page: runs the functions of executable.json (see
// llm_deploy/runtime/vm.py, which this mirrors instruction for instruction). Instructions are
// compiled once into closures over named registers; symbolic dims live in an environment that
// parameter checks and match instructions fill.

import { compileExpr } from "./symbolic.js";
import { ITEMSIZE } from "./device.js";

export class VMError extends Error {}

function matcher(info, what) {
  const kind = info.kind;
  if (kind === "object") return () => {};
  if (kind === "tuple") {
    const fields = info.fields.map((f, i) => matcher(f, `${what}[${i}]`));
    return (value, env) => {
      if (!Array.isArray(value) || value.length !== fields.length) throw new VMError(`${what}: expected a tuple of ${fields.length}`);
      fields.forEach((m, i) => m(value[i], env));
    };
  }
  if (kind === "prim") {
    return info.value === undefined || info.value === null ? () => {} : dimsMatcher([info.value], what, (v) => [Number(v)], "value");
  }
  const dims = kind === "tensor" ? info.shape : info.values;
  const shapeOf = (value) => {
    if (kind === "shape") return value.map(Number);
    if (info.dtype && value.dtype !== info.dtype) throw new VMError(`${what}: expected dtype ${info.dtype}, got ${value.dtype}`);
    return value.shape;
  };
  if (dims === undefined || dims === null) {
    return (value) => {
      const s = shapeOf(value);
      if (info.ndim !== -1 && info.ndim !== undefined && s.length !== info.ndim) throw new VMError(`${what}: expected rank ${info.ndim}, got shape (${s})`);
    };
  }
  return dimsMatcher(dims, what, shapeOf, "shape");
}

function dimsMatcher(dims, what, shapeOf, noun) {
  const evaluators = dims.map(compileExpr);
  const bare = dims.map((d) => (typeof d === "string" && /^[A-Za-z_]\w*$/.test(d) ? d : null));
  return (value, env) => {
    const actual = shapeOf(value);
    if (actual.length !== dims.length) throw new VMError(`${what}: expected ${noun} (${dims}), got (${actual})`);
    bare.forEach((name, i) => { if (name !== null && !(name in env)) env[name] = actual[i]; });
    evaluators.forEach((ev, i) => {
      if (ev(env) !== actual[i]) throw new VMError(`${what}: expected ${noun} (${dims}), got (${actual}) (${dims[i]} is ${ev(env)} here)`);
    });
  };
}

export class VirtualMachine {
  /** `kernels`: {name: fn(...args)}; `externs`: {name: fn}; `constants`: {name: tensor}. */
  constructor(program, kernels, externs, constants, device) {
    Object.assign(this, { program, kernels, externs, constants, device });
    this.storage = new Map(); // planned blocks, allocated at first use, then reused
    this.functions = {};
    for (const [name, f] of Object.entries(program.functions)) this.functions[name] = this.compileFunction(name, f);
  }

  fn(name) {
    const f = this.functions[name];
    if (!f) throw new VMError(`the program has no function '${name}'; it has ${Object.keys(this.functions).join(", ")}`);
    return f;
  }

  compileFunction(name, func) {
    const params = func.params;
    const checks = params.map((p, i) => matcher(func.param_infos[i], `${name}: parameter ${p}`));
    const body = this.compileBlock(func.instrs, name);
    return (...args) => {
      if (args.length !== params.length) throw new VMError(`${name} takes ${params.length} argument(s), got ${args.length}`);
      const regs = {};
      const env = {};
      params.forEach((p, i) => { regs[p] = args[i]; checks[i](args[i], env); });
      for (const step of body) step(regs, env);
      return regs[func.ret];
    };
  }

  compileBlock(instrs, fname) {
    return instrs.map((ins) => {
      const build = OPS[ins.op];
      if (!build) throw new VMError(`${fname}: unknown instruction '${ins.op}'`);
      return build.call(this, ins, fname);
    });
  }
}

const externOf = (vm, name, fname) => {
  const fn = vm.externs[name];
  if (!fn) throw new VMError(`${fname}: the library function '${name}' is not available in the browser runtime (it has ${Object.keys(vm.externs).join(", ")})`);
  return fn;
};

const OPS = {
  match(ins, fname) {
    const check = matcher(ins.info, `${fname}: match_cast ${ins.dst}`);
    return (regs, env) => { check(regs[ins.src], env); regs[ins.dst] = regs[ins.src]; };
  },
  alloc(ins) {
    const dims = ins.shape.map(compileExpr);
    if (!(ins.dtype in ITEMSIZE)) throw new VMError(`WebGPU has no dtype ${ins.dtype}`);
    return (regs, env) => { regs[ins.dst] = this.device.alloc(dims.map((d) => d(env)), ins.dtype); };
  },
  alloc_storage(ins) {
    return (regs) => {
      let block = this.storage.get(ins.key);
      if (!block) this.storage.set(ins.key, (block = this.device.allocStorage(Number(ins.bytes))));
      regs[ins.dst] = block;
    };
  },
  alloc_tensor(ins) {
    const dims = ins.shape.map(compileExpr);
    return (regs, env) => { regs[ins.dst] = this.device.view(regs[ins.storage], Number(ins.offset), dims.map((d) => d(env)), ins.dtype); };
  },
  reshape(ins) {
    const dims = ins.shape.map(compileExpr);
    return (regs, env) => { regs[ins.dst] = this.device.reshape(regs[ins.src], dims.map((d) => d(env))); };
  },
  call_tir(ins, fname) {
    const kernel = this.kernels[ins.kernel];
    if (!kernel) throw new VMError(`${fname}: kernel '${ins.kernel}' is not in the kernel library`);
    const scalars = (ins.scalars || []).map(compileExpr);
    return (regs, env) => kernel(...ins.args.map((a) => regs[a]), ...ins.outs.map((o) => regs[o]), ...scalars.map((s) => s(env)));
  },
  call_extern(ins, fname) {
    return (regs) => externOf(this, ins.name, fname)(...ins.args.map((a) => regs[a]), ...ins.outs.map((o) => regs[o]));
  },
  call_extern_value(ins, fname) {
    return (regs) => { regs[ins.dst] = externOf(this, ins.name, fname)(...ins.args.map((a) => regs[a])); };
  },
  call(ins) {
    return (regs) => { regs[ins.dst] = this.fn(ins.func)(...ins.args.map((a) => regs[a])); };
  },
  tuple(ins) {
    return (regs) => { regs[ins.dst] = ins.fields.map((f) => regs[f]); };
  },
  get_item(ins) {
    return (regs) => { regs[ins.dst] = regs[ins.src][ins.index]; };
  },
  copy(ins) {
    return (regs) => { regs[ins.dst] = regs[ins.src]; };
  },
  shape(ins) {
    const values = ins.values.map(compileExpr);
    return (regs, env) => { regs[ins.dst] = values.map((v) => v(env)); };
  },
  prim(ins) {
    const value = compileExpr(ins.value);
    return (regs, env) => { regs[ins.dst] = value(env); };
  },
  const(ins, fname) {
    const value = this.constants[ins.name];
    if (value === undefined) throw new VMError(`${fname}: constant '${ins.name}' is missing from the artifact`);
    return (regs) => { regs[ins.dst] = value; };
  },
  string(ins) {
    return (regs) => { regs[ins.dst] = ins.value; };
  },
  if(ins, fname) {
    const thenBody = this.compileBlock(ins.then, fname);
    const elseBody = this.compileBlock(ins.else, fname);
    return (regs, env) => {
      const cond = regs[ins.cond];
      if (typeof cond !== "number" && typeof cond !== "boolean") throw new VMError(`${fname}: a branch on a device tensor (${ins.cond}) cannot run in the browser runtime`);
      const [body, ret] = cond ? [thenBody, ins.then_ret] : [elseBody, ins.else_ret];
      for (const s of body) s(regs, env);
      regs[ins.dst] = regs[ret];
    };
  },
  free(ins) {
    return (regs) => { for (const n of ins.regs) delete regs[n]; };
  },
};
