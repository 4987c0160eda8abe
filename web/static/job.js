// The job page, kept up to date without reloading: server-sent events (status, progress and
// snapshot, each carrying the whole job JSON). The server ends a stream after a while with a
// `reconnect` event, and the page opens a new one at once; only a stream that breaks (or is
// refused) makes the page poll, once a second, until the job reaches a final status. The browser that submitted the job (only its page has
// the buttons) may cancel it, and delete it once it is over: the calls carry the page's CSRF
// token, which the API wants with the browser's cookie.
(function () {
  "use strict";

  const FINAL = ["succeeded", "failed", "canceled"];
  const ACTIVE = ["queued", "running"];
  const POLL_MS = 1000;
  const POLL_MAX_MS = 10000;

  const root = document.getElementById("job");
  const dataEl = document.getElementById("job-data");
  if (!root || !dataEl) return;

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"),
    queue: $("queue-position"),
    progress: $("progress"),
    progressText: $("progress-text"),
    losses: $("losses"),
    output: $("output"),
    latest: $("latest"),
    stageEmpty: $("stage-empty"),
    caption: $("stage-caption"),
    showLatest: $("show-latest"),
    download: $("download"),
    error: $("error"),
    errorMessage: $("error-message"),
    errorCode: $("error-code"),
    warning: $("weights-warning"),
    warningText: $("weights-warning-text"),
    weightsUsed: $("weights-used"),
    cancel: $("cancel"), // null on a page that is not the submitting browser's
    remove: $("delete"),
    cancelNote: $("cancel-note"),
    snapshots: $("snapshots"),
    snapshotsEmpty: $("snapshots-empty"),
  };
  const urls = {
    api: root.dataset.apiUrl,
    events: root.dataset.eventsUrl,
    cancel: root.dataset.cancelUrl,
    remove: root.dataset.deleteUrl,
    jobs: root.dataset.jobsUrl,
  };
  const baseTitle = document.title;

  let job = JSON.parse(dataEl.textContent);
  let source = null;
  let pollTimer = null;
  let pollDelay = POLL_MS;
  let cancelRequested = false;
  let pinned = null; // the iteration of a snapshot the reader chose to look at, or null

  const isFinal = (j) => FINAL.includes(j.status);
  // A clip's progress and strip count frames; an image's, iterations.
  const unit = job.kind === "clip" ? "frame" : "iteration";
  const Unit = unit[0].toUpperCase() + unit.slice(1);

  // Formatting (web/static/format.js): durations, numbers, the queue's and progress's words.
  const { duration, number, queueText } = window.Impasto.format;
  const progressText = (j) => window.Impasto.format.progressText(j, unit);

  // --- rendering: each part from the job JSON, safe to repeat -----------------------------

  function show(node, visible) {
    if (node) node.hidden = !visible;
  }

  function setSrc(img, url) {
    if (img.getAttribute("src") !== url) img.setAttribute("src", url);
  }

  function renderStatus(j) {
    el.status.textContent = j.status;
    el.status.className = "badge status-" + j.status;
    document.title = j.status + " · " + baseTitle;

    show(el.queue, j.status === "queued");
    if (j.status === "queued") el.queue.textContent = queueText(j.queue_position);

    const active = ACTIVE.includes(j.status);
    show(el.cancel, active);
    show(el.remove, !active);
    if (!el.cancel) return; // the rest is about a cancel this page asked for
    if (active && j.cancel_requested && !cancelRequested) {
      // Asked for earlier (before a reload, or from another tab): the worker stops soon.
      cancelRequested = true;
      el.cancel.disabled = true;
      el.cancel.textContent = "Canceling…";
      el.cancelNote.hidden = false;
      el.cancelNote.textContent = "Canceling: a running job stops after its current iteration.";
    }
    if (!active) {
      el.cancelNote.hidden = !cancelRequested || j.status === "canceled";
      if (cancelRequested && j.status !== "canceled") {
        el.cancelNote.textContent = "The job " + j.status + " before it could be canceled.";
      }
    }
  }

  function renderProgress(j) {
    const p = j.progress || {};
    el.progress.max = Math.max(1, p.iterations || 1);
    el.progress.value = Math.min(p.iteration || 0, el.progress.max);
    el.progress.textContent = Math.round((p.fraction || 0) * 100) + "%";
    el.progressText.textContent = progressText(j);

    el.losses.replaceChildren();
    const losses = j.losses || {};
    const names = ["total", "content", "style", "tv"].filter((n) => n in losses);
    if (!names.length) {
      const none = document.createElement("div");
      none.className = "muted";
      none.textContent = "None yet";
      el.losses.append(none);
    }
    for (const name of names) {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = number(losses[name]);
      row.append(dt, dd);
      el.losses.append(row);
    }
  }

  function renderSnapshots(j) {
    const items = (j.snapshots || []).slice().sort((a, b) => a.iteration - b.iteration);
    const have = new Set(
      Array.from(el.snapshots.querySelectorAll("img.snapshot"), (img) => Number(img.dataset.iteration))
    );
    for (const s of items) {
      if (have.has(s.iteration)) continue;
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "snapshot-button";
      button.dataset.iteration = String(s.iteration);
      button.setAttribute("aria-label", "Show " + unit + " " + s.iteration);
      const img = document.createElement("img");
      img.className = "snapshot";
      img.dataset.iteration = String(s.iteration);
      img.alt = "";
      img.src = s.url;
      const label = document.createElement("span");
      label.className = "snapshot-label";
      label.textContent = String(s.iteration);
      button.append(img);
      li.append(button, label);
      // Keep the strip in iteration order even if events arrive out of order.
      const next = Array.from(el.snapshots.children).find(
        (child) => Number(child.querySelector("img.snapshot").dataset.iteration) > s.iteration
      );
      el.snapshots.insertBefore(li, next || null);
    }
    show(el.snapshotsEmpty, items.length === 0);
  }

  function renderStage(j) {
    const items = (j.snapshots || []).slice().sort((a, b) => a.iteration - b.iteration);
    const newest = j.clip && j.clip.latest_frame_url; // a clip's frames are painted out of order
    const latest = (newest && items.find((s) => newest.endsWith("/frames/" + s.iteration + ".png"))) || items[items.length - 1];
    const chosen = pinned === null ? null : items.find((s) => s.iteration === pinned);
    const total = (j.progress || {}).iterations;

    el.snapshots.querySelectorAll(".snapshot-button").forEach((b) => {
      b.setAttribute("aria-pressed", String(chosen ? Number(b.dataset.iteration) === chosen.iteration : false));
    });
    show(el.showLatest, Boolean(chosen));

    if (j.output_url) {
      setSrc(el.output, j.output_url);
      el.download.href = j.output_url + "?download=1";
    }
    show(el.download, Boolean(j.output_url));

    const showSnapshot = (snapshot, alt) => {
      setSrc(el.latest, snapshot.url);
      el.latest.alt = alt + snapshot.iteration;
      el.caption.textContent = Unit + " " + snapshot.iteration + " of " + total;
      show(el.latest, true);
      show(el.output, false);
      show(el.stageEmpty, false);
    };
    if (chosen) {
      showSnapshot(chosen, "The snapshot at " + unit + " ");
    } else if (j.output_url) {
      const what = j.kind === "clip" ? "clip" : "picture";
      el.caption.textContent = j.status === "succeeded" ? "The finished " + what : "The " + what + " so far";
      show(el.output, true);
      show(el.latest, false);
      show(el.stageEmpty, false);
    } else if (latest) {
      showSnapshot(latest, "The latest snapshot, at " + unit + " ");
    } else {
      el.caption.textContent = "";
      el.stageEmpty.textContent =
        j.status === "queued" ? "Waiting for a worker…" :
        j.status === "running" ? "Painting: the first snapshot appears soon…" :
        "No picture was made.";
      show(el.latest, false);
      show(el.output, false);
      show(el.stageEmpty, true);
    }
  }

  function renderNotices(j) {
    show(el.error, Boolean(j.error));
    if (j.error) {
      el.errorMessage.textContent = j.error.message || "";
      el.errorCode.textContent = j.error.code || "";
    }
    show(el.warning, Boolean(j.weights_warning));
    if (j.weights_warning) el.warningText.textContent = j.weights_warning;
    if (el.weightsUsed && j.weights) el.weightsUsed.textContent = j.weights;
  }

  function render(j) {
    renderStatus(j);
    renderProgress(j);
    renderSnapshots(j);
    renderStage(j);
    renderNotices(j);
  }

  function update(next) {
    if (!next || typeof next !== "object" || !next.status) return;
    if (isFinal(job) && !isFinal(next)) return; // a late answer from before the end
    job = next;
    render(job);
    if (isFinal(job)) stop();
  }

  // --- live updates -------------------------------------------------------------------------

  function stop() {
    if (source) {
      source.close();
      source = null;
    }
    if (pollTimer !== null) {
      clearTimeout(pollTimer);
      pollTimer = null;
    }
  }

  function listen() {
    if (!("EventSource" in window)) {
      startPolling();
      return;
    }
    source = new EventSource(urls.events);
    const onEvent = (event) => {
      try {
        update(JSON.parse(event.data));
      } catch (err) {
        // A malformed event: the next one, or the poll, brings the state.
      }
    };
    for (const name of ["status", "progress", "snapshot"]) source.addEventListener(name, onEvent);
    // The server's normal end of a stream (its time limit): a new stream, not polling.
    source.addEventListener("reconnect", (event) => {
      onEvent(event);
      if (source) {
        source.close();
        source = null;
      }
      if (!isFinal(job)) listen();
    });
    // The stream broke, or was refused (too many live pages, the database away): poll until
    // the job is final.
    source.addEventListener("error", () => {
      if (source) {
        source.close();
        source = null;
      }
      startPolling();
    });
  }

  function startPolling() {
    if (pollTimer !== null || isFinal(job)) return;
    pollTimer = setTimeout(poll, pollDelay);
  }

  async function poll() {
    pollTimer = null;
    try {
      const response = await fetch(urls.api, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      update(await response.json());
      pollDelay = POLL_MS;
    } catch (err) {
      pollDelay = Math.min(pollDelay * 2, POLL_MAX_MS); // the server is away: ask less often
    }
    if (!isFinal(job) && source === null) startPolling();
  }

  // --- cancel and delete --------------------------------------------------------------------

  function csrfHeaders() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? { "X-CSRF-Token": meta.content } : {};
  }

  async function cancel() {
    el.cancel.disabled = true;
    el.cancel.textContent = "Canceling…";
    cancelRequested = true;
    el.cancelNote.hidden = false;
    el.cancelNote.textContent = "Canceling: a running job stops after its current iteration.";
    try {
      const response = await fetch(urls.cancel, {
        method: "POST",
        headers: { Accept: "application/json", ...csrfHeaders() },
      });
      const body = await response.json().catch(() => null);
      if (response.ok) {
        update(body);
        if (isFinal(job)) el.cancelNote.hidden = true;
      } else {
        const message = body && body.error ? body.error.message : "HTTP " + response.status;
        el.cancelNote.textContent = "Could not cancel: " + message;
        el.cancel.disabled = false;
        el.cancel.textContent = "Cancel";
        cancelRequested = false;
      }
    } catch (err) {
      el.cancelNote.textContent = "Could not reach the server to cancel; try again.";
      el.cancel.disabled = false;
      el.cancel.textContent = "Cancel";
      cancelRequested = false;
    }
    // The stream (or the poll) brings the final status; make sure one of them is running.
    if (!isFinal(job) && source === null) startPolling();
  }

  async function remove() {
    if (!window.confirm("Delete this job and its pictures? This cannot be undone.")) return;
    el.remove.disabled = true;
    try {
      const response = await fetch(urls.remove, {
        method: "DELETE",
        headers: { Accept: "application/json", ...csrfHeaders() },
      });
      if (response.ok) {
        window.location.assign(urls.jobs);
        return;
      }
      const body = await response.json().catch(() => null);
      el.cancelNote.textContent = "Could not delete: " + (body && body.error ? body.error.message : "HTTP " + response.status);
    } catch (err) {
      el.cancelNote.textContent = "Could not reach the server to delete; try again.";
    }
    el.cancelNote.hidden = false;
    el.remove.disabled = false;
  }

  // --- wiring -------------------------------------------------------------------------------

  if (el.cancel) el.cancel.addEventListener("click", cancel);
  if (el.remove) el.remove.addEventListener("click", remove);
  el.snapshots.addEventListener("click", (event) => {
    const button = event.target.closest(".snapshot-button");
    if (!button) return;
    const iteration = Number(button.dataset.iteration);
    pinned = pinned === iteration ? null : iteration;
    renderStage(job);
  });
  el.showLatest.addEventListener("click", () => {
    pinned = null;
    renderStage(job);
  });
  window.addEventListener("pagehide", stop);
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && !isFinal(job) && source === null) listen(); // back from the page cache
  });

  render(job);
  if (!isFinal(job)) listen();
})();
