#!/usr/bin/env node
// Reference non-Python subscriber for the segstream mask stream, written from docs/PROTOCOL.md alone.
//
//   node subscribe.js tcp://127.0.0.1:5555 [--count N] [--timeout SECONDS] [--lossless]
//
// Fetches the class table (REQ to PORT+1), subscribes (SUB to PORT, or with --lossless a DEALER
// to PORT+2 that grants credit, so nothing is missed), decodes each header and the
// raw / RLE mask, and checks what section 11 of the page lists: header size and JSON, protocol
// version, topic == stream, seq >= 0 and increasing, size limits before allocating, part lengths,
// RLE runs >= 1 covering width*height, every class id < num_classes (or the ignore index), the
// class-table digest. A message that fails a check is skipped and its error recorded; the 2-part end
// message ends the run. Prints one JSON summary line; exit 0 when every check passed, 1 otherwise.
"use strict";

const crypto = require("crypto");
const zmq = require("zeromq");

// docs/PROTOCOL.md section 11
const LIMITS = { headerBytes: 65536, side: 16384, pixels: 7680 * 4320, parts: 16 };

function parseArgs(argv) {
  const args = { endpoint: null, count: 10, timeout: 10, lossless: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--count") args.count = parseInt(argv[++i], 10);
    else if (argv[i] === "--timeout") args.timeout = parseFloat(argv[++i]);
    else if (argv[i] === "--lossless") args.lossless = true;
    else args.endpoint = argv[i];
  }
  const m = /^(?:tcp|zmq-pub):\/\/([^:/]+):(\d+)/.exec(args.endpoint || "");
  if (!m) throw new Error(`endpoint must look like tcp://HOST:PORT, got ${args.endpoint}`);
  args.host = m[1];
  args.port = parseInt(m[2], 10);
  return args;
}

// Same canonical form as the publisher: JSON with sorted keys, no spaces; SHA-256, first 16 hex digits.
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  // like Python's json.dumps default (ensure_ascii): DEL and non-ASCII as lowercase \uXXXX escapes
  // (characters beyond U+FFFF are already two UTF-16 units here, so they become a surrogate pair)
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

async function fetchClasses(host, port, timeoutMs) {
  const req = new zmq.Request({ receiveTimeout: timeoutMs, linger: 0 });
  req.connect(`tcp://${host}:${port}`);
  await req.send("classes");
  const [reply] = await req.receive();
  req.close();
  const doc = JSON.parse(reply.toString("utf8"));
  if (doc.kind !== "segstream.classes" || doc.version !== 1) throw new Error(`class table reply ${doc.kind} v${doc.version}`);
  const digest = crypto.createHash("sha256").update(canonical(doc.classes)).digest("hex").slice(0, 16);
  if (digest !== doc.digest) throw new Error(`class table digest ${digest} != ${doc.digest}`);
  return doc;
}

// RLE: packed 5-byte runs, uint32 little-endian length then uint8 class id, row-major.
function rleDecode(buf, n) {
  if (buf.length % 5 !== 0) throw new Error(`RLE payload ${buf.length} bytes is not a multiple of 5`);
  const out = Buffer.alloc(n);
  let pos = 0;
  for (let off = 0; off < buf.length; off += 5) {
    const len = buf.readUInt32LE(off);
    if (len === 0) throw new Error("RLE run of length 0");
    if (pos + len > n) throw new Error("RLE runs overflow width*height");
    out.fill(buf[off + 4], pos, pos + len);
    pos += len;
  }
  if (pos !== n) throw new Error(`RLE runs cover ${pos} pixels, expected ${n}`);
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = Math.round(args.timeout * 1000);
  let sub;
  if (args.lossless) {
    // recorder endpoint: grant credit for 16 messages, then one more per message handled
    sub = new zmq.Dealer({ receiveTimeout: timeoutMs, linger: 1000 });
    sub.connect(`tcp://${args.host}:${args.port + 2}`);
    await sub.send(["credit", "16"]);
  } else {
    sub = new zmq.Subscriber({ receiveTimeout: timeoutMs, linger: 0 });
    sub.connect(`tcp://${args.host}:${args.port}`);
    sub.subscribe();
  }
  let classes = null;
  const summary = { received: 0, ended: false, end_reason: null, missed_at_start: null, seqs: [], width: null, height: null, encodings: [], classes_digest: null, max_id: 0, skipped: 0, errors: [] };
  let lastSeq = -1;
  while (summary.received < args.count) {
    const parts = await sub.receive(); // throws on timeout
    if (args.lossless) await sub.send(["credit", "1"]);
    let header = null;
    try {
      if (parts.length < 2 || parts[1].length > LIMITS.headerBytes) throw new Error(`${parts.length} parts or header too large`);
      header = JSON.parse(parts[1].toString("utf8")); // JSON.parse is iterative in V8: deep nesting cannot crash it
      if (header === null || typeof header !== "object" || Array.isArray(header)) throw new Error("header is not a JSON object");
    } catch (err) {
      summary.skipped++;
      summary.errors.push(`skipped: ${err.message}`);
      continue;
    }
    if (parts.length === 2 && header.kind === "segstream.end" && header.version === 1) {
      summary.ended = true;
      if (typeof header.reason === "string") summary.end_reason = header.reason;
      break;
    }
    const problems = [];
    const check = (ok, what) => { if (!ok) problems.push(`seq ${header.seq}: ${what}`); };
    check(header.version === 1, `unknown protocol version ${header.version}`);
    check(header.kind === "segstream.mask", `kind ${header.kind}`);
    check(parts.length >= 3 && parts[0].toString("utf8") === header.stream, "topic != header.stream");
    check(Array.isArray(header.parts) && header.parts.length <= LIMITS.parts, "parts missing or too many");
    check(Number.isInteger(header.seq) && header.seq >= 0, "seq is not an integer >= 0");
    check(Number.isInteger(header.width) && Number.isInteger(header.height) && header.width >= 1 && header.height >= 1 &&
      header.width <= LIMITS.side && header.height <= LIMITS.side && header.width * header.height <= LIMITS.pixels,
      `size ${header.width}x${header.height} outside the limits`);
    if (problems.length === 0) {
      check(parts.length === 3 + header.parts.length, `${parts.length} parts, header announces ${3 + header.parts.length}`);
      check(parts[2].length === header.mask_bytes, `mask part ${parts[2].length} bytes, header says ${header.mask_bytes}`);
      header.parts.forEach((p, i) => check(parts[3 + i] !== undefined && parts[3 + i].length === p.bytes, `part ${p.name} length`));
    }
    if (problems.length) {
      summary.skipped++;
      summary.errors.push(...problems);
      continue;
    }
    check(header.seq > lastSeq, `seq ${header.seq} after ${lastSeq}`);
    lastSeq = header.seq;
    if (summary.missed_at_start === null) summary.missed_at_start = header.seq; // seq counts from 0
    if (!classes || classes.digest !== header.classes_digest) {
      classes = await fetchClasses(args.host, args.port + 1, Math.min(timeoutMs, 2000));
      check(classes.digest === header.classes_digest, "class table digest differs from header");
    }
    const n = header.width * header.height;
    let mask = null;
    try {
      if (header.encoding === "raw") {
        check(parts[2].length === n, `raw mask ${parts[2].length} bytes, expected ${n}`);
        mask = parts[2];
      } else if (header.encoding === "rle") {
        mask = rleDecode(parts[2], n);
      }
    } catch (err) {
      check(false, err.message);
    }
    if (mask) {
      const ignore = classes.classes.ignore_index;
      const numClasses = classes.classes.names.length;
      check(numClasses === header.num_classes, "num_classes differs from the class table");
      for (let i = 0; i < mask.length; i++) {
        const id = mask[i];
        if (id > summary.max_id) summary.max_id = id;
        if (id >= numClasses && id !== ignore) { check(false, `class id ${id} at pixel ${i}`); break; }
      }
    }
    summary.errors.push(...problems);
    summary.received++;
    summary.seqs.push(header.seq);
    summary.width = header.width;
    summary.height = header.height;
    if (!summary.encodings.includes(header.encoding)) summary.encodings.push(header.encoding);
    summary.classes_digest = header.classes_digest;
  }
  if (args.lossless) await sub.send(["bye"]);
  sub.close();
  summary.ok = summary.errors.length === 0 && summary.received > 0;
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
}

main().catch((err) => {
  console.error(`segstream node client: ${err.message || err}`);
  process.exit(1);
});
