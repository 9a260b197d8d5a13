// A safetensors file in an ArrayBuffer: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}}, then the bytes. Tensors are views, not copies.

const DTYPES = {
  F32: "float32", F16: "float16", I32: "int32", U32: "uint32", I64: "int64", U64: "uint64",
  I16: "int16", U16: "uint16", I8: "int8", U8: "uint8", BOOL: "bool",
};

/** {name: {dtype, shape, bytes (a Uint8Array view)}} of the file in `buffer`; `what` names it in errors. */
export function parseSafetensors(buffer, what = "safetensors file") {
  if (buffer.byteLength < 8) throw new Error(`${what}: ${buffer.byteLength} bytes, too short for a safetensors header`);
  const headerLength = Number(new DataView(buffer).getBigUint64(0, true));
  if (8 + headerLength > buffer.byteLength) throw new Error(`${what}: header of ${headerLength} bytes runs past the end of the file`);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, headerLength)));
  const start = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const dtype = DTYPES[info.dtype];
    if (!dtype) throw new Error(`${what}: tensor ${name} has dtype ${info.dtype}, which this runtime cannot hold`);
    const [begin, end] = info.data_offsets;
    if (start + end > buffer.byteLength) throw new Error(`${what}: tensor ${name} runs past the end of the file`);
    tensors[name] = { dtype, shape: info.shape, bytes: new Uint8Array(buffer, start + begin, end - begin) };
  }
  return tensors;
}
