#!/usr/bin/env node
// Reference non-Python subscriber for the segstream mask stream, written from docs/PROTOCOL.md alone.
//
//   node subscribe.js tcp://127.0.0.1:5555 [--count N] [--timeout SECONDS] [--lossless]
//
// Fetches the class table (REQ to PORT+1), subscribes (SUB to PORT, or with --lossless a DEALER
// to PORT+2 that grants credit, so nothing is missed), decodes each header and the
// raw / RLE / COCO-RLE / polygons mask, and checks what section 11 of the page lists: header size and JSON, protocol
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

// COCO compressed RLE string -> counts (pycocotools' rleFrString): 6-bit chunks offset by 48, 5 value
// bits each, 0x20 = more chunks follow, 0x10 of the last chunk = sign; counts from the 4th on are
// stored as the difference to the count two before.
function cocoCounts(str) {
  const counts = [];
  let p = 0;
  while (p < str.length) {
    let x = 0, k = 0, more = true, c = 0;
    while (more) {
      if (p >= str.length) throw new Error("COCO RLE string ends inside a count");
      c = str.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error("COCO RLE string has a character outside '0'..'o'");
      x |= (c & 0x1f) * 2 ** (5 * k); // no << past 31 bits
      more = (c & 0x20) !== 0; p++; k++;
      if (k > 7) throw new Error("COCO RLE count too large");
    }
    if (c & 0x10) x -= 2 ** (5 * k); // sign-extend
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// coco-rle: every segment's runs (column-major, 0-run first) must tile the image exactly once.
function cocoRleDecode(doc, w, h) {
  const n = w * h;
  const colMajor = Buffer.alloc(n);
  const covered = new Uint8Array(n);
  for (const s of doc.segments) {
    const seg = s.segmentation;
    if (!seg || !Array.isArray(seg.size) || seg.size[0] !== h || seg.size[1] !== w || typeof seg.counts !== "string") throw new Error("coco-rle segment without segmentation {size: [H, W], counts}");
    const counts = cocoCounts(seg.counts);
    let pos = 0;
    counts.forEach((len, i) => {
      if (len < 0 || (i > 0 && len === 0)) throw new Error("COCO RLE count < 1 after the first");
      if (pos + len > n) throw new Error("COCO RLE covers more than width*height");
      if (i % 2 === 1) {
        for (let j = pos; j < pos + len; j++) { if (covered[j]++) throw new Error("coco-rle segments overlap"); }
        colMajor.fill(s.category_id, pos, pos + len);
      }
      pos += len;
    });
    if (pos !== n) throw new Error(`COCO RLE covers ${pos} pixels, expected ${n}`);
  }
  if (covered.some((v) => v !== 1)) throw new Error("coco-rle segments leave pixels uncovered");
  const out = Buffer.alloc(n); // to row-major
  for (let x = 0; x < w; x++) for (let y = 0; y < h; y++) out[y * w + x] = colMajor[x * h + y];
  return out;
}

// polygons: fill, then each segment's rings (corners on pixel edges) painted with the even-odd rule
// at pixel centers (x + 0.5, y + 0.5), segments in order.
function polygonsDecode(doc, w, h) {
  if (!Number.isInteger(doc.fill) || doc.fill < 0 || doc.fill > 255) throw new Error("polygons payload without an integer fill");
  const out = Buffer.alloc(w * h, doc.fill);
  for (const s of doc.segments) {
    if (!Array.isArray(s.polygons)) throw new Error("polygons segment without a polygons list");
    const rings = [];
    for (const p of s.polygons) rings.push(p.exterior, ...(p.holes || []));
    const edges = [];
    for (const r of rings) {
      if (!Array.isArray(r) || r.length % 2) throw new Error("a ring is not a flat list of x, y pairs");
      for (let i = 0; i < r.length; i += 2) {
        if (!Number.isInteger(r[i]) || !Number.isInteger(r[i + 1]) || r[i] < 0 || r[i] > w || r[i + 1] < 0 || r[i + 1] > h) throw new Error("a polygon corner is outside the image");
        const j = (i + 2) % r.length;
        if (r.length >= 6) edges.push([r[i], r[i + 1], r[j], r[j + 1]]);
      }
    }
    for (let y = 0; y < h; y++) {
      const yc = y + 0.5;
      const xs = [];
      for (const [x0, y0, x1, y1] of edges) {
        if ((y0 <= yc) !== (y1 <= yc)) xs.push(x0 + ((yc - y0) * (x1 - x0)) / (y1 - y0));
      }
      xs.sort((a, b) => a - b);
      for (let k = 0; k + 1 < xs.length; k += 2) {
        for (let x = Math.max(0, Math.ceil(xs[k] - 0.5)); x < w && x + 0.5 < xs[k + 1]; x++) out[y * w + x] = s.category_id;
      }
    }
  }
  return out;
}

function segmentsDecode(payload, header) {
  if (payload.length > 2 * LIMITS.pixels + 2 ** 20) throw new Error("segments payload too large");
  const doc = JSON.parse(payload.toString("utf8"));
  if (!doc || doc.format !== header.encoding || !Array.isArray(doc.size) || doc.size[0] !== header.height || doc.size[1] !== header.width || !Array.isArray(doc.segments)) {
    throw new Error(`segments payload does not match the header (${header.encoding} ${header.width}x${header.height})`);
  }
  for (const s of doc.segments) {
    if (!Number.isInteger(s.category_id) || s.category_id < 0 || s.category_id > 255 || !Number.isInteger(s.area)) throw new Error("segment without integer category_id / area");
  }
  return header.encoding === "coco-rle" ? cocoRleDecode(doc, header.width, header.height) : polygonsDecode(doc, header.width, header.height);
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
  const summary = { received: 0, ended: false, end_reason: null, missed_at_start: null, seqs: [], width: null, height: null, encodings: [], classes_digest: null, max_id: 0, id_sums: [], maps: {}, depth: null, skipped: 0, errors: [] };
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
      } else if (header.encoding === "coco-rle" || header.encoding === "polygons") {
        mask = segmentsDecode(parts[2], header);
      }
    } catch (err) {
      check(false, err.message);
    }
    if (mask) {
      const ignore = classes.classes.ignore_index;
      const numClasses = classes.classes.names.length;
      check(numClasses === header.num_classes, "num_classes differs from the class table");
      let idSum = 0;
      for (let i = 0; i < mask.length; i++) {
        const id = mask[i];
        idSum += id;
        if (id > summary.max_id) summary.max_id = id;
        if (id >= numClasses && id !== ignore) { check(false, `class id ${id} at pixel ${i}`); break; }
      }
      summary.id_sums.push(idSum); // lets a test compare the decoded pixels with what was sent
    }
    // uncertainty parts (publisher ?maps=entropy,margin): uint8 planes like the mask; raw ones are read
    // here (per-message mean, 0-1), png ones checked by signature (decode them with any PNG library)
    header.parts.forEach((p, i) => {
      if (p.name !== "entropy" && p.name !== "margin") return; // other parts: skipped by name
      const data = parts[3 + i];
      const m = summary.maps[p.name] || (summary.maps[p.name] = { encoding: p.encoding, means: [] });
      if (p.encoding === "raw") {
        check(data.length === n, `${p.name} part ${data.length} bytes, expected ${n}`);
        let sum = 0;
        for (let k = 0; k < data.length; k++) sum += data[k];
        m.means.push(sum / Math.max(1, data.length) / 255);
      } else if (p.encoding === "png") {
        check(data.length >= 8 && data.readUInt32BE(0) === 0x89504e47, `${p.name} part is not a PNG`);
      } else {
        check(false, `${p.name} encoding ${p.encoding}`);
      }
    });
    // depth part (RGB-D runs, publisher ?depth=raw|png): uint16 millimetres, 0 = no measurement, at the
    // mask's size; raw is little-endian (read here: per-message sum and count of valid pixels, so a test can
    // compare with what was sent); png is a 16-bit grey PNG, its IHDR checked (decode it with any PNG library)
    header.parts.forEach((p, i) => {
      if (p.name !== "depth") return;
      const data = parts[3 + i];
      const d = summary.depth || (summary.depth = { encoding: p.encoding, sums: [], valid: [] });
      if (p.encoding === "raw") {
        if (data.length !== 2 * n) { check(false, `depth part ${data.length} bytes, expected ${2 * n}`); return; }
        let sum = 0, valid = 0;
        for (let k = 0; k < data.length; k += 2) {
          const mm = data.readUInt16LE(k);
          sum += mm;
          if (mm > 0) valid++;
        }
        d.sums.push(sum);
        d.valid.push(valid);
      } else if (p.encoding === "png") {
        const ok = data.length >= 26 && data.readUInt32BE(0) === 0x89504e47 && data.toString("latin1", 12, 16) === "IHDR" &&
          data.readUInt32BE(16) === header.width && data.readUInt32BE(20) === header.height && data[24] === 16 && data[25] === 0;
        check(ok, `depth part is not a ${header.width}x${header.height} 16-bit grey PNG`);
      } else {
        check(false, `depth encoding ${p.encoding}`);
      }
    });
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
