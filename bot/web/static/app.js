// Search All: the web page. Plain JavaScript, no build step, no third-party code.
// It posts the form to /api/search, buttons to /api/action, and renders the JSON reply.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const app = $("app");
  const state = { image: null, audio: null, recorder: null, limit: null, config: null };

  // ----------------------------------------------------------------- messages and state

  function setState(name) {
    app.dataset.state = name;
    for (const button of document.querySelectorAll("button")) {
      if (button.id !== "record") button.disabled = name === "busy";
    }
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    setState("error");
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function humanBytes(size) {
    if (size >= 1e6) return `${(size / 1e6).toFixed(1)} MB`;
    if (size >= 1e3) return `${Math.round(size / 1e3)} kB`;
    return `${size} bytes`;
  }

  // ----------------------------------------------------------------- chosen media

  function choose(kind, file) {
    const max = state.config ? state.config.max_file_bytes : Infinity;
    if (file && file.size > max) {
      showError(`${file.name} is ${humanBytes(file.size)}; the limit is ${humanBytes(max)} — choose a smaller file`);
      file = null;
    }
    state[kind] = file;
    const box = $(`${kind}-box`);
    const preview = box.querySelector(".preview");
    const element = $(`${kind}-preview`);
    if (element.src) URL.revokeObjectURL(element.src);
    if (!file) {
      preview.hidden = true;
      element.removeAttribute("src");
      $(kind).value = "";
      return;
    }
    element.src = URL.createObjectURL(file);
    $(`${kind}-name`).textContent = `${file.name} (${humanBytes(file.size)})`;
    preview.hidden = false;
  }

  function firstFile(files, prefix) {
    for (const file of files || []) {
      if (!prefix || file.type.startsWith(prefix)) return file;
    }
    return null;
  }

  $("image").addEventListener("change", (e) => choose("image", e.target.files[0] || null));
  $("audio").addEventListener("change", (e) => choose("audio", e.target.files[0] || null));
  $("image-clear").addEventListener("click", () => choose("image", null));
  $("audio-clear").addEventListener("click", () => choose("audio", null));

  document.addEventListener("paste", (e) => {
    const file = firstFile(e.clipboardData && e.clipboardData.files, "image/");
    if (!file) return; // plain text pastes go where the cursor is
    e.preventDefault();
    const named = file.name && file.name !== "image.png" ? file : new File([file], "pasted.png", { type: file.type });
    choose("image", named);
  });

  for (const kind of ["image", "audio"]) {
    const box = $(`${kind}-box`);
    box.addEventListener("dragover", (e) => { e.preventDefault(); box.classList.add("over"); });
    box.addEventListener("dragleave", () => box.classList.remove("over"));
    box.addEventListener("drop", (e) => {
      e.preventDefault();
      box.classList.remove("over");
      const file = firstFile(e.dataTransfer.files);
      if (file) choose(kind, file);
    });
  }

  // ----------------------------------------------------------------- recording

  async function startRecording() {
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      showError("This browser cannot record audio here (recording needs http://127.0.0.1 or https).");
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      showError(`The microphone is not available: ${err.message || err.name}`);
      return;
    }
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    const started = performance.now();
    const timer = setInterval(() => {
      const seconds = (performance.now() - started) / 1000;
      $("record-time").dataset.seconds = seconds.toFixed(1);
      $("record-time").textContent = `recording… ${seconds.toFixed(1)} s`;
    }, 100);
    recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
    recorder.addEventListener("stop", () => {
      clearInterval(timer);
      stream.getTracks().forEach((t) => t.stop());
      const type = (recorder.mimeType || "audio/webm").split(";")[0];
      const suffix = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
      choose("audio", new File(chunks, `recording.${suffix}`, { type }));
      $("record-time").textContent = "";
      $("record").textContent = "● Record";
      state.recorder = null;
    });
    recorder.start(250);
    state.recorder = recorder;
    $("record").textContent = "■ Stop";
  }

  $("record").addEventListener("click", () => {
    if (state.recorder) state.recorder.stop();
    else startRecording();
  });

  // ----------------------------------------------------------------- talking to the server

  async function call(url, options) {
    clearError();
    setState("busy");
    let response;
    try {
      response = await fetch(url, options);
    } catch (err) {
      showError("Cannot reach the search server: is `search-all web` still running?");
      return;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok || !body || body.error) {
      const fallback = response.status === 413 ? "The upload is too large." : `The server answered ${response.status}.`;
      showError((body && body.error) || fallback);
      return;
    }
    render(body);
    setState("ready");
  }

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new FormData();
    form.append("text", $("text").value);
    form.append("limit", $("limit").value);
    form.append("audio_as", $("audio_as").value);
    if (state.image) form.append("image", state.image, state.image.name);
    if (state.audio) form.append("audio", state.audio, state.audio.name);
    state.limit = $("limit").value;
    call("/api/search", { method: "POST", body: form });
  });

  function runAction(id) {
    call("/api/action", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id, limit: state.limit || $("limit").value }),
    });
  }

  $("next-page").addEventListener("click", (e) => runAction(e.currentTarget.dataset.action));

  // ----------------------------------------------------------------- the reply

  function line(id, text) {
    $(id).textContent = text || "";
    $(id).hidden = !text;
  }

  function card(image) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "card";
    button.dataset.action = image.more;
    button.dataset.id = image.id;
    button.title = `More like #${image.rank}`;
    button.addEventListener("click", () => runAction(image.more));

    const picture = document.createElement("img");
    picture.src = image.image_url;
    picture.alt = image.caption || image.id;
    picture.loading = "lazy";
    if (image.width && image.height) {
      picture.width = image.width;
      picture.height = image.height;
    }
    const meta = document.createElement("span");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${image.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = image.score_text;
    meta.append(rank, score);
    if (image.similar_text) {
      const similar = document.createElement("span");
      similar.className = "similar";
      similar.textContent = image.similar_text;
      meta.append(similar);
    }
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = image.caption || image.id;
    button.append(picture, meta, caption);
    item.append(button);
    return item;
  }

  function render(reply) {
    $("results").hidden = false;
    $("results-header").textContent = reply.header;
    line("heard", reply.heard_text);
    line("notes", (reply.notes || []).join(" "));
    line("notice", reply.notice);
    $("gallery").replaceChildren(...reply.images.map(card));
    $("gallery-hint").hidden = !reply.images.length;
    const next = $("next-page");
    next.hidden = !reply.next_page;
    if (reply.next_page) next.dataset.action = reply.next_page;
  }

  // ----------------------------------------------------------------- start

  fetch("/api/config")
    .then((r) => r.json())
    .then((config) => {
      state.config = config;
      $("limit").max = config.max_limit;
      $("limit").value = config.default_limit;
      $("text").maxLength = config.max_query_chars;
      setState("ready");
    })
    .catch(() => showError("Cannot reach the search server: is `search-all web` still running?"));
})();
