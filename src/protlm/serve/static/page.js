// The page at /: one protein's contact map, variant landscape and mean embedding, from the
// server's own API (relative URLs, so it works behind a path prefix). No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const AAS = "ACDEFGHIKLMNPQRSTVWY";
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [103, 169, 207], [247, 247, 247], [239, 138, 98], [178, 24, 43]];
const MIN_SEPARATION = 6; // top-L contacts skip pairs closer than this along the chain
let current = null; // {id, sequence} of the protein shown

function colour(stops, t) {
  t = Math.min(1, Math.max(0, t));
  const x = t * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
  return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
}

function status(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

// The first FASTA record, or the whole text as one unnamed sequence.
function parseInput(text) {
  text = text.trim();
  if (!text) return null;
  if (!text.startsWith(">")) return { id: "query", sequence: text.replace(/\s+/g, "") };
  const lines = text.split(/\r?\n/);
  const id = (lines[0].slice(1).trim().split(/\s+/)[0]) || "query";
  const body = [];
  for (const line of lines.slice(1)) {
    if (line.startsWith(">")) break;
    body.push(line.trim());
  }
  return { id, sequence: body.join("") };
}

async function api(path, body, accept) {
  const headers = {};
  if (body) headers["Content-Type"] = "application/json";
  if (accept) headers["Accept"] = accept;
  const token = $("token").value.trim();
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, { method: body ? "POST" : "GET", headers, body: body ? JSON.stringify(body) : undefined });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error.message; } catch (e) { /* not our JSON error */ }
    if (r.status === 401) msg += " (enter the API token)";
    throw new Error(msg);
  }
  return r;
}

// A vertical colour bar with three labels.
function colourBar(canvas, stops, lo, hi) {
  const ctx = canvas.getContext("2d"), h = canvas.height - 20;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let y = 0; y < h; y++) {
    const [r, g, b] = colour(stops, 1 - y / (h - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(0, y + 10, 16, 1);
  }
  ctx.fillStyle = "#222";
  ctx.font = "11px sans-serif";
  [[hi, 10], [(lo + hi) / 2, 10 + h / 2], [lo, 10 + h]].forEach(([v, y]) => ctx.fillText(v.toFixed(2), 20, y + 4));
}

function drawContacts(reply) {
  const { id, contacts } = reply.data[0], L = contacts.length;
  const canvas = $("contact-map"), ctx = canvas.getContext("2d");
  // colours span the map's own range (an uncalibrated head's maps can sit in a narrow band)
  let lo = Infinity, hi = -Infinity;
  for (const row of contacts) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const span = hi - lo || 1;
  const img = new ImageData(L, L);
  for (let i = 0; i < L; i++) {
    for (let j = 0; j < L; j++) {
      const [r, g, b] = colour(VIRIDIS, (contacts[i][j] - lo) / span), k = 4 * (i * L + j);
      img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255;
    }
  }
  const off = document.createElement("canvas");
  off.width = off.height = L;
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  colourBar($("contact-bar"), VIRIDIS, lo, hi);
  $("contact-title").textContent = `${id}, L = ${L}${reply.calibrated ? "" : " (uncalibrated contact head)"}`;
  topContacts(contacts, current.sequence);
  canvas.onmousemove = (ev) => {
    const rect = canvas.getBoundingClientRect();
    const i = Math.floor((ev.clientY - rect.top) / rect.height * L), j = Math.floor((ev.clientX - rect.left) / rect.width * L);
    if (i >= 0 && j >= 0 && i < L && j < L) {
      showTip(ev, `${current.sequence[i]}${i + 1}–${current.sequence[j]}${j + 1}: ${contacts[i][j].toFixed(3)}`);
    }
  };
  canvas.onmouseleave = hideTip;
  canvas.dataset.ready = "1";
}

function topContacts(contacts, seq) {
  const L = contacts.length, pairs = [];
  for (let i = 0; i < L; i++) for (let j = i + MIN_SEPARATION; j < L; j++) pairs.push([contacts[i][j], i, j]);
  pairs.sort((a, b) => b[0] - a[0]);
  const body = $("top-contacts").tBodies[0];
  body.replaceChildren(...pairs.slice(0, L).map(([p, i, j], n) => {
    const tr = document.createElement("tr");
    for (const v of [n + 1, i + 1, j + 1, `${seq[i]}–${seq[j]}`, p.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = v; // text, never HTML: sequences come from the user
      tr.appendChild(td);
    }
    return tr;
  }));
}

function drawLandscape(reply) {
  const { matrix, wild_type: wt, amino_acids: aas } = reply, L = matrix.length;
  const cw = Math.max(3, Math.min(14, Math.floor(900 / L))), ch = 12, left = 18, top = 4;
  const canvas = $("landscape"), ctx = canvas.getContext("2d");
  canvas.width = left + L * cw + 4;
  canvas.height = top + aas.length * ch + 22;
  let hi = 0;
  for (const row of matrix) for (const v of row) hi = Math.max(hi, Math.abs(v));
  hi = hi || 1;
  ctx.font = "10px ui-monospace, monospace";
  ctx.fillStyle = "#222";
  [...aas].forEach((a, r) => ctx.fillText(a, 4, top + r * ch + 10));
  for (let p = 0; p < L; p++) {
    [...aas].forEach((a, r) => {
      const [R, G, B] = a === wt[p] ? [40, 40, 40] : colour(DIVERGING, 0.5 + matrix[p][r] / (2 * hi));
      ctx.fillStyle = `rgb(${R},${G},${B})`;
      ctx.fillRect(left + p * cw, top + r * ch, cw, ch);
    });
    if ((p + 1) % 10 === 0 || p === 0) {
      ctx.fillStyle = "#222";
      ctx.fillText(String(p + 1), left + p * cw, top + aas.length * ch + 14);
    }
  }
  colourBar($("landscape-bar"), DIVERGING, -hi, hi);
  canvas.onmousemove = (ev) => {
    const rect = canvas.getBoundingClientRect();
    const p = Math.floor((ev.clientX - rect.left - left) / cw), r = Math.floor((ev.clientY - rect.top - top) / ch);
    if (p < 0 || p >= L || r < 0 || r >= aas.length) return hideTip();
    const name = `${wt[p]}${p + 1}${aas[r]}`;
    showTip(ev, aas[r] === wt[p] ? `${name}: wild type` : `${name}: ${matrix[p][r].toFixed(3)}`);
  };
  canvas.onmouseleave = hideTip;
  status($("landscape-status"), `${L} positions × 19 substitutions; dark cells: the wild type. Hover for the score.`);
  canvas.dataset.ready = "1";
}

function showTip(ev, text) {
  const tip = $("tooltip");
  tip.textContent = text;
  tip.style.left = ev.clientX + 12 + "px";
  tip.style.top = ev.clientY + 12 + "px";
  tip.hidden = false;
}

function hideTip() { $("tooltip").hidden = true; }

async function download(kind) {
  if (!current) return;
  const npy = kind === "npy";
  try {
    const r = await api("v1/embeddings", { sequences: [current], include: ["mean"], unknown_to_x: $("unknown-to-x").checked },
      npy ? "application/x-npy" : "application/json");
    const a = $("download-link");
    a.href = URL.createObjectURL(await r.blob());
    a.download = `${current.id.replace(/[^\w.-]+/g, "_")}_mean.${npy ? "npy" : "json"}`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    status($("status"), e.message, true);
  }
}

async function submit() {
  const rec = parseInput($("sequence").value);
  if (!rec || !rec.sequence) return status($("status"), "Paste a sequence or a FASTA record first.", true);
  sessionStorage.setItem("protlm-token", $("token").value);
  current = rec;
  const unknown = $("unknown-to-x").checked;
  $("results").hidden = false;
  for (const id of ["contact-map", "landscape"]) delete $(id).dataset.ready;
  status($("status"), `Predicting contacts of ${rec.id} (${rec.sequence.length} residues)…`);
  status($("landscape-status"), `Scoring ${19 * rec.sequence.length} substitutions (one masked forward per position)…`);
  const contacts = api("v1/contacts", { sequences: [rec], unknown_to_x: unknown })
    .then((r) => r.json()).then((reply) => { drawContacts(reply); status($("status"), `${rec.id}: contacts ready.`); })
    .catch((e) => status($("status"), e.message, true));
  const landscape = api("v1/variants", { id: rec.id, sequence: rec.sequence, unknown_to_x: unknown })
    .then((r) => r.json()).then(drawLandscape)
    .catch((e) => status($("landscape-status"), e.message, true));
  await Promise.all([contacts, landscape]);
}

async function showModel() {
  try {
    const m = (await (await api("v1/models")).json()).data[0];
    $("model").textContent = `${m.id} · ${m.layers} layers · d=${m.embed_dim} · ${m.device} ${m.dtype}` +
      (m.ready ? "" : " · loading…");
  } catch (e) {
    $("model").textContent = e.message;
  }
}

$("token").value = sessionStorage.getItem("protlm-token") || "";
$("submit").addEventListener("click", submit);
$("download-npy").addEventListener("click", () => download("npy"));
$("download-json").addEventListener("click", () => download("json"));
$("file").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (f) $("sequence").value = await f.text();
});
$("token").addEventListener("change", showModel);
showModel();
