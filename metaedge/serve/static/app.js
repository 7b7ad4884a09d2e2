// The metaedge page: enroll, classify and manage classes through the /v1 API of the device that served it.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("metaedge-key") || "";
let pending = [];          // images waiting to be enrolled: {blob, name, url}
let stream = null;         // the camera, while it is on
let thumbsKept = false;

function say(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = kind;
}

// Every API call: the key if one was given, JSON back, and the service's one-line error on failure.
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("X-API-Key", apiKey);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("key-form").hidden = false;
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("application/json") ? response.json() : response.blob();
}

function imageElement(url, alt) {
  const img = document.createElement("img");
  img.src = url;
  img.alt = alt;
  return img;
}

// -- classes ---------------------------------------------------------------------------------------------------

async function refresh() {
  const classes = await api("v1/classes");
  const list = $("classes");
  list.replaceChildren();
  $("class-count").textContent = `(${classes.length})`;
  $("no-classes").hidden = classes.length > 0;
  for (const c of classes) list.append(classRow(c));
}

function classRow(c) {
  const li = document.createElement("li");
  li.dataset.label = c.label;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = c.label;
  const count = document.createElement("span");
  count.className = "count";
  count.textContent = `${c.count} image${c.count === 1 ? "" : "s"}`;
  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  for (const id of c.thumbnails.slice(-12)) {
    api(`v1/thumbnails/${id}`).then((blob) => thumbs.append(imageElement(URL.createObjectURL(blob), c.label)))
      .catch(() => {});
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const rename = button("Rename", () => startRename(li, c.label));
  rename.className = "rename";
  // Two clicks, not confirm(): a dialog would block the page (and a headless browser dismisses it).
  const remove = button("Remove", async () => {
    if (remove.dataset.armed !== "1") {
      remove.dataset.armed = "1";
      remove.textContent = "Really remove?";
      return;
    }
    await run(async () => {
      await api(`v1/classes/${encodeURIComponent(c.label)}`, { method: "DELETE" });
      say(`removed ${c.label}`, "ok");
      await refresh();
    });
  });
  remove.className = "remove danger";
  actions.append(rename, remove);
  li.append(name, count, thumbs, actions);
  return li;
}

function startRename(li, label) {
  const input = document.createElement("input");
  input.value = label;
  input.className = "rename-input";
  const save = button("Save", () => run(async () => {
    await api(`v1/classes/${encodeURIComponent(label)}`, {
      method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ label: input.value }),
    });
    say(`renamed ${label} to ${input.value.trim()}`, "ok");
    await refresh();
  }));
  li.querySelector(".name").replaceWith(input);
  li.querySelector(".actions").replaceChildren(save, button("Cancel", refresh));
  input.focus();
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

async function run(task) {
  try {
    await task();
  } catch (e) {
    say(e.message, "error");
  }
}

// -- enrolling -------------------------------------------------------------------------------------------------

function addPending(blob, name) {
  const url = URL.createObjectURL(blob);
  pending.push({ blob, name, url });
  $("enroll-preview").append(imageElement(url, name));
}

$("enroll-files").addEventListener("change", (event) => {
  for (const file of event.target.files) addPending(file, file.name);
  event.target.value = "";
});

$("enroll-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(async () => {
    if (!pending.length) throw new Error("add images first: files, or photos from the camera");
    const form = new FormData();
    form.append("label", $("enroll-label").value);
    if ($("enroll-replace").checked) form.append("replace", "true");
    for (const p of pending) form.append("images", p.blob, p.name);
    $("enroll-submit").disabled = true;
    try {
      const r = await api("v1/classes", { method: "POST", body: form });
      say(`enrolled ${r.label}: ${r.images} image(s), ${r.total_embeddings} in the class ` +
          `(${r.timings_ms.total.toFixed(1)} ms)`, "ok");
    } finally {
      $("enroll-submit").disabled = false;
    }
    pending.forEach((p) => URL.revokeObjectURL(p.url));
    pending = [];
    $("enroll-preview").replaceChildren();
    $("enroll-label").value = "";
    await refresh();
  });
});

// -- the camera ------------------------------------------------------------------------------------------------

async function frame() {
  const video = $("camera");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

$("camera-toggle").addEventListener("click", () => run(async () => {
  if (stream) {
    stream.getTracks().forEach((t) => t.stop());
    stream = null;
  } else {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("no camera here: browsers allow it only on https:// or localhost pages");
    }
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  }
  $("camera").srcObject = stream;
  $("camera").hidden = !stream;
  $("camera-shot").disabled = $("classify-camera").disabled = $("locate-camera").disabled = !stream;
  $("camera-toggle").textContent = stream ? "Camera off" : "Camera";
}));

$("camera-shot").addEventListener("click", () => run(async () => {
  addPending(await frame(), `camera-${pending.length + 1}.png`);
}));

$("classify-camera").addEventListener("click", () => run(async () => classify(await frame(), "camera.png")));

// -- classifying -----------------------------------------------------------------------------------------------

async function classify(blob, name) {
  const form = new FormData();
  form.append("images", blob, name);
  const [p] = await api(`v1/classify?top_k=${$("top-k").value}`, { method: "POST", body: form });
  const old = $("result-image").src;
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  $("result-image").src = URL.createObjectURL(blob);
  const label = $("result-label");
  label.textContent = p.unknown ? "unknown" : p.label;
  label.className = p.unknown ? "answer unknown" : "answer";
  $("result-top").replaceChildren(...p.top_k.map((t) => {
    const li = document.createElement("li");
    li.textContent = t.label;
    const score = document.createElement("span");
    score.textContent = t.score.toFixed(3);
    li.append(score);
    return li;
  }));
  $("result").hidden = false;
  say(`classified ${name}`, "ok");
}

$("classify-files").addEventListener("change", (event) => run(async () => {
  const file = event.target.files[0];
  event.target.value = "";
  if (file) await classify(file, file.name);
}));

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => run(async () => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) await classify(file, file.name);
}));

// -- locating (localisation bundles) ---------------------------------------------------------------------------

const COLOURS = [[230, 57, 70], [36, 88, 214], [27, 127, 59], [214, 140, 0], [142, 68, 173], [0, 150, 160]];
let lastScene = null;      // {blob, name, found}: redrawn when "draw absent classes too" changes

// A mask as the API sends it (COCO's uncompressed run-length, column-major, background first) -> (H*W) 0/1.
function decodeMask(rle) {
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  let at = 0;
  rle.counts.forEach((n, i) => {
    if (i % 2 === 1) {
      for (let k = at; k < at + n; k++) out[(k % h) * w + Math.floor(k / h)] = 1;  // column-major -> row-major
    }
    at += n;
  });
  return out;
}

async function drawScene() {
  const { blob, found } = lastScene;
  const bitmap = await createImageBitmap(blob);
  const canvas = $("locate-canvas");
  // Small scenes drawn at 3x (whole pixels, so a mask pixel covers exactly its scene pixel); large ones as they are.
  const scale = Math.max(1, Math.min(3, Math.floor(480 / Math.max(bitmap.width, bitmap.height))));
  canvas.width = bitmap.width * scale;
  canvas.height = bitmap.height * scale;
  const g = canvas.getContext("2d");
  g.imageSmoothingEnabled = false;
  g.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const shown = found.filter((f) => f.present || $("locate-all").checked);
  shown.forEach((f) => {
    const [r, gr, b] = COLOURS[found.indexOf(f) % COLOURS.length];
    const mask = decodeMask(f.mask);
    const layer = new ImageData(bitmap.width, bitmap.height);
    for (let i = 0; i < mask.length; i++) {
      if (mask[i]) layer.data.set([r, gr, b, 110], 4 * i);
    }
    const tmp = document.createElement("canvas");
    tmp.width = bitmap.width;
    tmp.height = bitmap.height;
    tmp.getContext("2d").putImageData(layer, 0, 0);
    g.drawImage(tmp, 0, 0, canvas.width, canvas.height);
    if (f.box) {
      const [x0, y0, x1, y1] = f.box;  // inclusive pixel indices
      g.strokeStyle = `rgb(${r},${gr},${b})`;
      g.lineWidth = 2;
      g.strokeRect(x0 * scale, y0 * scale, (x1 - x0 + 1) * scale, (y1 - y0 + 1) * scale);
      g.fillStyle = `rgb(${r},${gr},${b})`;
      g.font = "bold 13px system-ui, sans-serif";
      g.fillText(f.label, x0 * scale + 2, Math.max(12, y0 * scale - 3));
    }
  });
}

async function locate(blob, name) {
  const form = new FormData();
  form.append("images", blob, name);
  const [scene] = await api("v1/locate", { method: "POST", body: form });
  lastScene = { blob, name, found: scene.found };
  await drawScene();
  $("locate-found").replaceChildren(...scene.found.map((f, i) => {
    const li = document.createElement("li");
    li.dataset.label = f.label;
    li.className = f.present ? "present" : "absent";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${COLOURS[i % COLOURS.length].join(",")})`;
    const text = document.createElement("span");
    text.className = "name";
    text.textContent = `${f.label} ${f.score.toFixed(3)} ${f.present ? "present" : "absent"}`;
    const box = document.createElement("span");
    box.className = "box";
    box.textContent = f.box ? `box ${f.box.join(", ")}` : "no mask";
    li.append(swatch, text, box);
    return li;
  }));
  $("locate-result").hidden = false;
  const present = scene.found.filter((f) => f.present).map((f) => f.label);
  say(`located in ${name}: ${present.length ? present.join(", ") : "no class present"}`, "ok");
}

$("locate-files").addEventListener("change", (event) => run(async () => {
  const file = event.target.files[0];
  event.target.value = "";
  if (file) await locate(file, file.name);
}));
$("locate-all").addEventListener("change", () => lastScene && run(drawScene));
$("locate-camera").addEventListener("click", () => run(async () => locate(await frame(), "camera.png")));

const locateDrop = $("locate-drop");
locateDrop.addEventListener("dragover", (event) => { event.preventDefault(); locateDrop.classList.add("over"); });
locateDrop.addEventListener("dragleave", () => locateDrop.classList.remove("over"));
locateDrop.addEventListener("drop", (event) => run(async () => {
  event.preventDefault();
  locateDrop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) await locate(file, file.name);
}));

// -- start -----------------------------------------------------------------------------------------------------

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("metaedge-key", apiKey);
  start();
});

async function start() {
  await run(async () => {
    const info = await api("v1/info");
    thumbsKept = info.keep_thumbnails;
    $("key-form").hidden = true;
    $("model").textContent = `${info.model_id} · ${info.task}` + (thumbsKept ? "" : " · thumbnails off");
    // One task per bundle: a localisation bundle locates in scenes, a classification bundle classifies.
    $("locate").hidden = info.task !== "locate";
    $("classify").hidden = info.task === "locate";
    await refresh();
    say("");
  });
}

start();
