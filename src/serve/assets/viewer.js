// The covseg viewer: upload a slice to /v1/segment, draw the CT with its labels overlaid
// (GGO red, consolidation green) on one canvas, with an opacity slider and, for several slices,
// a slice slider. Plain Canvas 2D, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const COLOURS = { 1: [255, 40, 40], 2: [40, 255, 40] };
let answer = null;
let images = [];

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot decode an image from the server"));
    img.src = url;
  });
}

function pixels(img) {
  const c = document.createElement("canvas");
  c.width = img.width;
  c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, img.width, img.height);
}

function draw() {
  if (!answer) return;
  const index = Number($("slice").value);
  const { ct, labels } = images[index];
  const canvas = $("canvas");
  canvas.width = ct.width;
  canvas.height = ct.height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(ct.width, ct.height);
  const alpha = Number($("opacity").value) / 100;
  for (let i = 0; i < out.data.length; i += 4) {
    const grey = ct.data[i];
    const colour = COLOURS[labels.data[i]];
    for (let k = 0; k < 3; k++) {
      out.data[i + k] = colour ? Math.round(grey * (1 - alpha) + colour[k] * alpha) : grey;
    }
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  const s = answer.slices[index];
  const total = s.height * s.width;
  const mm = (v) => (s.area_mm2 ? v.toFixed(1) : "–");
  const pct = (v) => ((100 * v) / total).toFixed(2) + " %";
  $("ggo-px").textContent = s.pixels.ggo;
  $("cons-px").textContent = s.pixels.consolidation;
  $("all-px").textContent = s.pixels.ggo + s.pixels.consolidation;
  $("ggo-mm").textContent = s.area_mm2 ? mm(s.area_mm2.ggo) : "–";
  $("cons-mm").textContent = s.area_mm2 ? mm(s.area_mm2.consolidation) : "–";
  $("all-mm").textContent = s.area_mm2 ? mm(s.area_mm2.ggo + s.area_mm2.consolidation) : "–";
  $("ggo-share").textContent = pct(s.pixels.ggo);
  $("cons-share").textContent = pct(s.pixels.consolidation);
  $("all-share").textContent = (100 * s.lesion_share).toFixed(2) + " %";
  $("slice-label").textContent = `${index + 1} / ${answer.slices.length}`;
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
}

let uploads = 0;

async function upload(file) {
  const ticket = ++uploads;
  const form = new FormData();
  form.append("file", file);
  form.append("spacing", $("spacing").value.trim());
  setStatus(`segmenting ${file.name}…`);
  let response;
  try {
    response = await fetch("/v1/segment", { method: "POST", body: form });
  } catch (e) {
    setStatus(`the server did not answer: ${e.message}`, true);
    return;
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    setStatus(`the server answered ${response.status} without JSON`, true);
    return;
  }
  if (!response.ok) {
    setStatus(`${response.status}: ${body.error}`, true);
    return;
  }
  const decoded = [];
  try {
    for (const s of body.slices) {
      const [ct, labels] = await Promise.all([loadImage(s.image), loadImage(s.labels)]);
      decoded.push({ ct: pixels(ct), labels: pixels(labels) });
    }
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  // A newer upload started meanwhile: its answer wins.
  if (ticket !== uploads) return;
  images = decoded;
  answer = body;
  $("slice").max = String(body.slices.length - 1);
  $("slice").value = "0";
  $("slice-row").className = body.slices.length > 1 ? "" : "hidden";
  $("version").textContent = body.model_version.slice(0, 16);
  $("timing").textContent = `model ${body.timings.infer_ms.toFixed(0)} ms, total ${body.timings.total_ms.toFixed(0)} ms`;
  $("view").className = "";
  draw();
  setStatus(`${file.name}: ${body.slices.length} slice${body.slices.length > 1 ? "s" : ""} segmented`);
  document.body.dataset.state = "segmented";
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) upload(e.target.files[0]);
});
$("opacity").addEventListener("input", draw);
$("slice").addEventListener("input", draw);
const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});
