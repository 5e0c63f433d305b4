// "Queue on RunPod" for desktop ComfyUI: one command sends the open graph to the pack's
// /runpod/ routes, which hold the API key, run the graph on a RunPod endpoint and save the
// results into output/runpod/<job id>/. A sidebar tab lists the jobs; the settings dialog
// sets the endpoint. The API key is write-only: this page sends it once and never sees it.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ACTIVE = new Set(["IN_QUEUE", "IN_PROGRESS"]);
const jobs = new Map(); // id -> job view, as the server sends it
const marked = new Set(); // ids of failed jobs whose node errors this page already showed
let panel = null; // the sidebar tab's list element while it is shown
let ticker = null;

function toast(severity, summary, detail) {
  app.extensionManager.toast.add({ severity, summary, detail, life: 8000 });
}

async function call(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await api.fetchApi(path, options);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(answer.error || `HTTP ${response.status}`);
    error.code = answer.code;
    throw error;
  }
  return answer;
}

async function queueOnRunPod() {
  const { output, workflow } = await app.graphToPrompt();
  if (app.lastNodeErrors) setNodeErrors(null); // as a local queue does: the old marks go
  try {
    const answer = await call("/runpod/queue", { prompt: output, workflow, count: 1 });
    for (const job of answer.jobs) upsert(job);
    toast("info", "Queued on RunPod", answer.jobs.map((j) => j.id).join(", "));
    return answer.jobs.map((j) => j.id);
  } catch (error) {
    toast("error", "Queue on RunPod failed", error.message);
    return [];
  }
}

// fetchModels: "Fetch models and run", the same graph with the models its failure lacked.
async function retry(id, fetchModels = false) {
  try {
    const answer = await call(`/runpod/jobs/${encodeURIComponent(id)}/retry`, fetchModels ? { fetchModels } : {});
    for (const job of answer.jobs) upsert(job);
    toast("info", fetchModels ? "Fetching models and running on RunPod" : "Retried on RunPod",
      answer.jobs.map((j) => j.id).join(", "));
  } catch (error) {
    toast("error", "Retry failed", error.message);
  }
}

// -- remote validation errors, marked on the canvas like a local one ------------------------

// The frontend keeps the errors of the last queued prompt in a pinia store (read back as
// app.lastNodeErrors): the canvas outlines those nodes and their inputs in red. The extension
// manager is a pinia store too and leads to the others. Where they live depends on the
// frontend, so this looks for what is there:
// - newer ones (1.49, 1.58) have an "executionError" store written through recordNodeErrors
//   (per open workflow); the execution store's lastNodeErrors is only a view of it there;
// - 1.32 has a writable lastNodeErrors on the "execution" store;
// - older ones keep it on the app.
function piniaStore(id) {
  const pinia = app.extensionManager?._p
    ?? document.getElementById("vue-app")?.__vue_app__?.config.globalProperties.$pinia;
  return pinia?._s?.get(id) ?? null;
}

function setNodeErrors(errors) {
  const errorStore = piniaStore("executionError");
  const store = piniaStore("execution");
  if (typeof errorStore?.recordNodeErrors === "function") errorStore.recordNodeErrors(errors);
  else if (store) store.lastNodeErrors = errors;
  else app.lastNodeErrors = errors;
  app.canvas.draw(true, true);
}

function markNodeErrors(job) {
  if (!job.nodeErrors || marked.has(job.id)) return;
  marked.add(job.id);
  // Only nodes of the open graph that are what the job ran (the user may have moved on).
  const errors = Object.fromEntries(Object.entries(job.nodeErrors).filter(([id, info]) => {
    const node = app.graph?.getNodeById(id);
    return node && (node.comfyClass ?? node.type) === info.class_type;
  }));
  const lines = Object.entries(job.nodeErrors).map(([id, info]) =>
    `#${id} ${info.class_type}: ` +
    info.errors.map((e) => (e.details ? `${e.message} (${e.details})` : e.message)).join("; "));
  toast("error", "RunPod: the graph failed validation", lines.join("\n"));
  if (Object.keys(errors).length) setNodeErrors(errors);
}

// -- settings: rendered by hand so that nothing lands in comfy.settings.json ---------------

let settingsCache = null;
// The API key field's tooltip on a loopback base URL with no key set.
const LOCAL_NO_KEY = "Leave empty for a local `comfyui-runpod serve` started without --api-key.";
async function settings(refresh = false) {
  if (!settingsCache || refresh) settingsCache = await call("/runpod/settings");
  return settingsCache;
}

function settingInput(field, { secret = false } = {}) {
  return () => {
    const input = document.createElement("input");
    input.className = "p-inputtext runpod-setting";
    input.dataset.field = field;
    input.type = secret ? "password" : "text";
    input.autocomplete = "off";
    input.style.width = "20rem";
    const show = (s) => {
      const source = s[field === "apiKey" ? "apiKeySource" : `${field.replace("Id", "")}Source`];
      input.disabled = source === "env";
      input.title = source === "env" ? "set by an environment variable" : "";
      if (secret) {
        // A key entered for another host is not sent: the field asks for this host's.
        input.value = "";
        input.placeholder = s.apiKeySet ? `•••••••• set (${s.apiKeySource})`
          : `not set for ${s.apiKeyFor}`;
        input.title = s.apiKeyProblem || (s.apiKeyOptional ? LOCAL_NO_KEY : input.title);
      } else {
        input.value = s[field] || "";
        input.placeholder = field === "baseUrl" ? s.defaultBaseUrl : "";
      }
    };
    input.runpodShow = show; // a save re-renders every field: a new base URL drops the key
    settings().then(show).catch(() => {});
    input.addEventListener("change", async () => {
      try {
        settingsCache = await call("/runpod/settings", { [field]: input.value });
        for (const other of document.querySelectorAll("input.runpod-setting")) {
          other.runpodShow?.(settingsCache);
        }
        if (settingsCache.notice) toast("warn", "RunPod", settingsCache.notice);
        else toast("success", "RunPod", secret ? "API key saved on the ComfyUI server" : "Saved");
      } catch (error) {
        toast("error", "RunPod settings", error.message);
      }
    });
    return input;
  };
}

// -- the job list ---------------------------------------------------------------------------

function upsert(job) {
  // A websocket event may overtake the HTTP answer that carried an older view of the job.
  if ((jobs.get(job.id)?.rev ?? -1) > (job.rev ?? 0)) return;
  jobs.set(job.id, job);
  if (panel) drawRow(job);
}

function seconds(ms) {
  if (ms == null) return "–";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function viewUrl(file) {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder, type: file.type });
  return api.apiURL(`/view?${query}`);
}

function drawRow(job) {
  let row = panel.querySelector(`.runpod-job[data-id="${CSS.escape(job.id)}"]`);
  if (!row) {
    row = document.createElement("div");
    row.className = "runpod-job";
    row.dataset.id = job.id;
    row.innerHTML = `
      <div class="runpod-head"><span class="runpod-status"></span>
        <span class="runpod-id"></span><span class="runpod-elapsed"></span>
        <button class="runpod-retry p-button p-button-sm p-button-text" title="Retry: the same graph as a new job"><i class="pi pi-refresh"></i></button>
        <button class="runpod-cancel p-button p-button-sm p-button-text" title="Cancel"><i class="pi pi-times"></i></button></div>
      <div class="runpod-bar"><div></div></div>
      <div class="runpod-times"></div><div class="runpod-error"></div>
      <ul class="runpod-lacks"></ul>
      <button class="runpod-fetch p-button p-button-sm">Fetch models and run</button>
      <img class="runpod-preview" alt="live preview">
      <div class="runpod-thumbs"></div>`;
    row.querySelector(".runpod-retry").addEventListener("click", () => retry(job.id));
    row.querySelector(".runpod-fetch").addEventListener("click", () => retry(job.id, true));
    row.querySelector(".runpod-cancel").addEventListener("click", async () => {
      try {
        upsert(await call(`/runpod/jobs/${encodeURIComponent(job.id)}/cancel`, {}));
      } catch (error) {
        toast("error", "Cancel failed", error.message);
      }
    });
    panel.prepend(row);
  }
  row.dataset.status = job.status;
  row.querySelector(".runpod-status").textContent = job.status;
  row.querySelector(".runpod-id").textContent = job.id;
  row.querySelector(".runpod-id").title = job.endpoint;
  const percent = job.progress?.percent ?? (job.status === "COMPLETED" ? 100 : 0);
  row.querySelector(".runpod-bar > div").style.width = `${percent}%`;
  row.querySelector(".runpod-times").textContent =
    `delay ${seconds(job.delayTime)} · execution ${seconds(job.executionTime)}` +
    (job.progress?.class ? ` · ${job.progress.class}` : "");
  row.querySelector(".runpod-error").textContent = job.error || "";
  // What the endpoint lacks, in words (nodes/lacks.py), and the one action that helps.
  const lacks = job.lacks ?? [];
  row.querySelector(".runpod-lacks").replaceChildren(...lacks.map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
  row.querySelector(".runpod-lacks").style.display = lacks.length ? "" : "none";
  row.querySelector(".runpod-fetch").style.display = job.canFetch && job.retryable ? "" : "none";
  row.querySelector(".runpod-cancel").style.display = ACTIVE.has(job.status) ? "" : "none";
  row.querySelector(".runpod-retry").style.display = job.retryable ? "" : "none";
  const preview = row.querySelector(".runpod-preview");
  // The sampler's latest latent preview while the job runs (a small JPEG data: URL).
  const showPreview = ACTIVE.has(job.status) && job.preview?.startsWith("data:image/jpeg;base64,");
  if (showPreview && preview.getAttribute("src") !== job.preview) preview.src = job.preview;
  if (!showPreview) preview.removeAttribute("src");
  preview.style.display = showPreview ? "" : "none";
  const thumbs = row.querySelector(".runpod-thumbs");
  if (thumbs.childElementCount !== job.files.length) {
    thumbs.replaceChildren(...job.files.map((file) => {
      const img = document.createElement("img");
      img.src = viewUrl(file);
      img.title = `${file.subfolder}/${file.filename}`;
      img.addEventListener("click", () => window.open(viewUrl(file), "_blank"));
      return img;
    }));
  }
  tick(row, job);
}

function tick(row, job) {
  const end = job.finishedAt ?? Date.now() / 1000;
  row.querySelector(".runpod-elapsed").textContent = `${(end - job.submittedAt).toFixed(1)} s`;
}

const STYLE = `
.runpod-panel { padding: 0.5rem; display: flex; flex-direction: column; gap: 0.5rem; overflow-y: auto; height: 100%; }
.runpod-job { border: 1px solid var(--border-color, #444); border-radius: 6px; padding: 0.4rem; font-size: 0.8rem; }
.runpod-head { display: flex; gap: 0.5rem; align-items: center; }
.runpod-status { font-weight: bold; }
.runpod-job[data-status="COMPLETED"] .runpod-status { color: #4caf50; }
.runpod-job[data-status="FAILED"] .runpod-status, .runpod-job[data-status="TIMED_OUT"] .runpod-status { color: #f44336; }
.runpod-job[data-status="CANCELLED"] .runpod-status { opacity: 0.7; }
.runpod-preview { display: block; width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; background: #222; margin-top: 4px; border-radius: 4px; }
.runpod-id { opacity: 0.7; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; }
.runpod-bar { height: 4px; background: rgba(127,127,127,0.3); border-radius: 2px; margin: 0.3rem 0; }
.runpod-bar > div { height: 100%; background: #2196f3; border-radius: 2px; transition: width 0.2s; }
.runpod-error { color: #f44336; white-space: pre-wrap; }
.runpod-lacks { margin: 0.3rem 0; padding-left: 1.2rem; }
.runpod-fetch { margin-top: 0.2rem; }
.runpod-thumbs { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 4px; }
.runpod-thumbs img { width: 64px; height: 64px; object-fit: contain; cursor: pointer; image-rendering: pixelated; background: #222; }
.runpod-empty { opacity: 0.7; }`;

async function renderPanel(el) {
  if (!document.getElementById("runpod-style")) {
    const style = document.createElement("style");
    style.id = "runpod-style";
    style.textContent = STYLE;
    document.head.append(style);
  }
  panel = document.createElement("div");
  panel.className = "runpod-panel";
  el.replaceChildren(panel);
  // Rebuilt from the server's list, so it survives a page reload.
  try {
    const answer = await call("/runpod/jobs");
    for (const job of [...answer.jobs].reverse()) {
      // An event may have brought a newer view while the list was on its way.
      if ((jobs.get(job.id)?.rev ?? -1) <= (job.rev ?? 0)) jobs.set(job.id, job);
    }
  } catch (error) {
    toast("error", "RunPod jobs", error.message);
  }
  if (!jobs.size) {
    panel.innerHTML = `<div class="runpod-empty">No RunPod jobs yet: open a graph and run
      "Queue on RunPod" (menu RunPod, or Alt+Shift+R).</div>`;
  }
  for (const job of [...jobs.values()].sort((a, b) => a.submittedAt - b.submittedAt)) drawRow(job);
  clearInterval(ticker);
  ticker = setInterval(() => {
    if (!panel?.isConnected) return clearInterval(ticker);
    for (const job of jobs.values()) {
      if (!ACTIVE.has(job.status)) continue;
      const row = panel.querySelector(`.runpod-job[data-id="${CSS.escape(job.id)}"]`);
      if (row) tick(row, job);
    }
  }, 1000);
}

api.addEventListener("runpod.job", ({ detail }) => {
  panel?.querySelector(".runpod-empty")?.remove();
  upsert(detail);
  // Live only: a page reload does not mark an old failure on whatever graph is open now.
  if (detail.status === "FAILED") markNodeErrors(detail);
});

app.registerExtension({
  name: "RunPod.Desktop",
  commands: [
    { id: "RunPod.Queue", label: "Queue on RunPod", icon: "pi pi-cloud-upload", function: queueOnRunPod },
  ],
  keybindings: [{ combo: { key: "r", alt: true, shift: true }, commandId: "RunPod.Queue" }],
  menuCommands: [{ path: ["RunPod"], commands: ["RunPod.Queue"] }],
  settings: [
    {
      id: "RunPod.Endpoint.Id",
      category: ["RunPod", "Endpoint", "Endpoint id"],
      name: "Endpoint id",
      tooltip: "The RunPod serverless endpoint that runs your graphs (env COMFYUI_RUNPOD_ENDPOINT_ID wins).",
      type: settingInput("endpointId"),
      defaultValue: "",
    },
    {
      id: "RunPod.Endpoint.BaseUrl",
      category: ["RunPod", "Endpoint", "Base URL"],
      name: "Base URL",
      tooltip: "Empty: RunPod's hosted API. http://127.0.0.1:8000/v2 for `comfyui-runpod serve`.",
      type: settingInput("baseUrl"),
      defaultValue: "",
    },
    {
      id: "RunPod.Endpoint.ApiKey",
      category: ["RunPod", "Endpoint", "API key"],
      name: "API key",
      tooltip: "Stored on the ComfyUI server (user/comfyui-runpod.json), never shown again.",
      type: settingInput("apiKey", { secret: true }),
      defaultValue: "",
    },
  ],
  async setup() {
    app.extensionManager.registerSidebarTab({
      id: "runpod",
      icon: "pi pi-cloud",
      title: "RunPod",
      tooltip: "RunPod jobs",
      type: "custom",
      render: (el) => { renderPanel(el); },
    });
  },
});
