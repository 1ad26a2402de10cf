// The archdiff studio: a form around POST /v1/generate, a gallery of results, and 👍/👎 feedback.
// Plain JS, no framework or CDN: the server may have no internet. The API is described at /docs.
"use strict";

const TOKEN_KEY = "archdiff-token";
const SIDES = Array.from({ length: 16 }, (_, i) => (i + 1) * 64); // 64..1024: what the size pickers offer
const $ = (id) => document.getElementById(id);

let served = { loras: [], controlnets: [] };
let upload = null; // the chosen image as a data: URL
let sizeTouched = false; // once the user picks a size, ticking a LoRA no longer changes it

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// Every API call: the token if one is kept, JSON both ways, {"error"} bodies turned into ApiError.
async function api(path, body) {
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body: JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "cannot reach the server: is `archdiff serve` still running?");
  }
  const data = await response.json().catch(() => ({}));
  if (response.ok) return data;
  if (response.status === 401) {
    askToken(token ? "That token was not accepted; check it and try again." : "");
    throw new ApiError(401, "enter the access token above");
  }
  const message = data.error || `the server answered ${response.status} ${response.statusText}`;
  throw new ApiError(response.status, message, Number(response.headers.get("Retry-After")) || null);
}

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = !text;
}

function askToken(note) {
  $("token-note").textContent = note;
  $("token-note").hidden = !note;
  $("token-form").hidden = false;
  $("controls").classList.add("locked");
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  $("token-form").hidden = true;
  $("controls").classList.remove("locked");
  say("");
  load();
});

// --- what the server serves --------------------------------------------------------------------------------------

async function load() {
  try {
    const health = await api("/health");
    $("base").textContent = `base model: ${health.base}`;
    served = await api("/v1/loras");
  } catch (error) {
    if (error.status !== 401) say(error.message); // the token form says it
    return;
  }
  showLoras();
  showControlnets();
}

function showLoras() {
  const list = $("loras");
  list.replaceChildren();
  $("no-loras").hidden = served.loras.length > 0;
  for (const lora of served.loras) {
    const item = document.createElement("li");
    item.className = "lora";
    item.dataset.name = lora.name;
    item.innerHTML = `
      <label class="inline name"><input type="checkbox" class="use"> <span></span></label>
      <label class="weight">weight <input type="range" class="scale" min="0" max="2" step="0.05"> <output></output></label>
      <p class="trigger muted" hidden>trigger: <q></q> <button type="button" class="quiet add-trigger">add to prompt</button></p>`;
    item.querySelector(".name span").textContent = lora.name;
    const scale = item.querySelector(".scale");
    scale.value = lora.scale;
    item.querySelector("output").textContent = Number(lora.scale).toFixed(2);
    scale.addEventListener("input", () => {
      item.querySelector("output").textContent = Number(scale.value).toFixed(2);
      item.querySelector(".use").checked = true; // moving the weight means using it
      defaultSize();
    });
    item.querySelector(".use").addEventListener("change", () => defaultSize());
    if (lora.trigger) {
      item.querySelector(".trigger").hidden = false;
      item.querySelector("q").textContent = lora.trigger;
      item.querySelector(".add-trigger").addEventListener("click", () => addTrigger(lora.trigger, item));
    }
    list.append(item);
  }
  defaultSize();
}

function addTrigger(trigger, item) {
  const prompt = $("prompt");
  if (!prompt.value.toLowerCase().includes(trigger.toLowerCase())) {
    prompt.value = prompt.value.trim() ? `${trigger}, ${prompt.value.trim()}` : `${trigger}, `;
  }
  item.querySelector(".use").checked = true;
  defaultSize();
  prompt.focus();
}

function chosenLoras() {
  return [...document.querySelectorAll("#loras .lora")]
    .filter((item) => item.querySelector(".use").checked)
    .map((item) => ({ name: item.dataset.name, scale: Number(item.querySelector(".scale").value) }));
}

// The size a LoRA was trained at suits it best: the first ticked LoRA's (else the first served one's) resolution.
// With an upload, "auto": the server fits the image's own proportions to that size.
function defaultSize() {
  if (sizeTouched) return;
  const first = chosenLoras()[0];
  const lora = served.loras.find((l) => first && l.name === first.name) || served.loras[0];
  const side = lora && lora.resolution && !upload ? lora.resolution : "";
  for (const id of ["width", "height"]) setSide($(id), side);
}

function fillSides(select) {
  const auto = new Option("auto", "");
  auto.title = "the LoRA's training size (or the base model's), in the proportions of an uploaded image";
  select.replaceChildren(auto, ...SIDES.map((side) => new Option(`${side} px`, side)));
  select.addEventListener("change", () => (sizeTouched = true));
}

function setSide(select, side) {
  if (side && !SIDES.includes(side) && ![...select.options].some((o) => o.value === String(side))) {
    select.append(new Option(`${side} px`, side)); // a LoRA trained off the 64 grid still gets its own size
  }
  select.value = String(side);
}

function showControlnets() {
  const nets = served.controlnets;
  $("mode-control-label").hidden = nets.length === 0;
  $("controlnet").replaceChildren(...nets.map((net) => new Option(`${net.name} (${net.control_type})`, net.name)));
  if (nets.length) setControlScale(nets[0].scale);
  else $("mode-img2img").checked = true;
  showMode();
}

function setControlScale(scale) {
  $("control-scale").value = scale;
  $("control-scale-value").textContent = Number(scale).toFixed(2);
}

$("controlnet").addEventListener("change", () => {
  const net = served.controlnets.find((n) => n.name === $("controlnet").value);
  if (net) setControlScale(net.scale);
});

// --- the form -----------------------------------------------------------------------------------------------------

for (const [input, shown] of [["steps", "steps-value"], ["guidance", "guidance-value"], ["strength", "strength-value"],
  ["control-scale", "control-scale-value"]]) {
  $(input).addEventListener("input", () => ($(shown).textContent = $(input).value));
}

$("seed-random").addEventListener("change", () => ($("seed").disabled = $("seed-random").checked));

function showMode() {
  const control = $("mode-control").checked;
  $("img2img-options").hidden = control;
  $("control-options").hidden = !control;
}
for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showMode);

function takeFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg)$/.test(file.type)) {
    say(`${file.name} is not a PNG or JPEG image`);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    upload = reader.result;
    $("upload-preview").src = upload;
    $("upload-preview").hidden = false;
    $("drop-text").hidden = true;
    $("upload-options").hidden = false;
    defaultSize();
    say("");
  };
  reader.readAsDataURL(file);
}

$("upload").addEventListener("change", () => takeFile($("upload").files[0]));
$("drop").addEventListener("click", (event) => {
  if (event.target.tagName !== "LABEL" && event.target.tagName !== "INPUT") $("upload").click();
});
$("drop").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    $("upload").click();
  }
});
for (const kind of ["dragenter", "dragover"]) {
  $("drop").addEventListener(kind, (event) => {
    event.preventDefault();
    $("drop").classList.add("over");
  });
}
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  $("drop").classList.remove("over");
  takeFile(event.dataTransfer.files[0]);
});
$("upload-clear").addEventListener("click", () => {
  upload = null;
  $("upload").value = "";
  $("upload-preview").hidden = true;
  $("upload-preview").removeAttribute("src");
  $("drop-text").hidden = false;
  $("upload-options").hidden = true;
  defaultSize();
});

function requestBody() {
  const side = (id) => ($(id).value ? Number($(id).value) : null);
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative").value.trim() || null,
    loras: chosenLoras(),
    seed: $("seed-random").checked ? null : Number($("seed").value),
    num_images: Number($("num-images").value),
    steps: Number($("steps").value),
    guidance: Number($("guidance").value),
    width: side("width"),
    height: side("height"),
  };
  if (upload && $("mode-control").checked) {
    Object.assign(body, { control_image: upload, controlnet: $("controlnet").value, control_scale: Number($("control-scale").value) });
  } else if (upload) {
    Object.assign(body, { init_image: upload, strength: Number($("strength").value) });
  }
  return body;
}

// --- generating ---------------------------------------------------------------------------------------------------

let running = false;

async function generate() {
  if (running) return;
  running = true;
  const button = $("generate");
  const started = performance.now();
  const tick = () => ($("elapsed").textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`);
  tick();
  const timer = setInterval(tick, 100);
  button.disabled = true;
  button.classList.add("busy");
  $("generate-label").textContent = "Drawing…";
  say("");
  try {
    const result = await api("/v1/generate", requestBody());
    const cards = result.images.map((image, i) => makeCard(image, result.ids[i], result.settings, result.settings.seeds[i]));
    $("gallery").prepend(...cards); // newest request first, its images in seed order
    $("empty").hidden = true;
    say(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`, "ok");
  } catch (error) {
    if (error.status === 503) {
      say(`server busy, retry in ${error.retryAfter || "a few"} s`);
    } else {
      say(error.message);
    }
  } finally {
    clearInterval(timer);
    running = false;
    button.disabled = false;
    button.classList.remove("busy");
    $("generate-label").textContent = "Generate";
    $("elapsed").textContent = "";
  }
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});

// --- the gallery --------------------------------------------------------------------------------------------------

function makeCard(image, id, settings, seed) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  const src = `data:image/png;base64,${image}`; // the PNG as the server sent it: its text chunks hold the settings
  card.dataset.id = id;
  card.dataset.seed = seed;
  const img = card.querySelector("img");
  img.src = src;
  img.alt = settings.prompt;
  card.querySelector(".prompt").textContent = settings.prompt;
  const loras = settings.lora && settings.lora.length ? settings.lora.join(", ") : "no LoRA";
  const facts = [`seed ${seed}`, loras, `${settings.width}×${settings.height}`, `${settings.steps} steps`, `guidance ${settings.guidance}`];
  if (settings.init_image) facts.push(`from upload, strength ${settings.strength}`);
  if (settings.controlnet) facts.push(`following ${settings.controlnet.join(", ")}`);
  card.querySelector(".facts").textContent = facts.join(" · ");
  const link = card.querySelector(".download");
  link.href = src;
  link.download = `archdiff-${seed}.png`;
  card.querySelector(".reuse").addEventListener("click", () => {
    $("seed-random").checked = false;
    $("seed").disabled = false;
    $("seed").value = seed;
  });
  for (const thumb of card.querySelectorAll(".thumb")) thumb.addEventListener("click", () => rate(card, thumb));
  return card;
}

async function rate(card, thumb) {
  try {
    const answer = await api("/v1/feedback", { id: Number(card.dataset.id), rating: thumb.dataset.rating });
    for (const other of card.querySelectorAll(".thumb")) {
      const chosen = other.dataset.rating === answer.rating;
      other.classList.toggle("selected", chosen);
      other.setAttribute("aria-pressed", String(chosen));
    }
  } catch (error) {
    say(`rating not saved: ${error.message}`);
  }
}

fillSides($("width"));
fillSides($("height"));
load();
