// The sweep page: the grid fills in live. Server-sent `sweep` events carry the whole sweep
// JSON; each cell shows its output, else its latest snapshot, its status and progress. A
// `reconnect` event opens a new stream; a broken stream makes the page poll every 2 s until
// every cell has ended. The submitting browser may cancel every cell not yet ended.
(function () {
  "use strict";

  const ACTIVE = ["queued", "running"];
  const root = document.getElementById("sweep");
  const dataEl = document.getElementById("sweep-data");
  if (!root || !dataEl) return;
  const $ = (id) => document.getElementById(id);
  let sweep = JSON.parse(dataEl.textContent);
  let pollTimer = null;

  function render(body) {
    sweep = body;
    const status = $("sweep-status");
    status.textContent = body.status;
    status.className = "badge status-" + body.status;
    const done = body.cells.filter((c) => c.status === "succeeded").length;
    $("sweep-done").textContent = done + " of " + body.cells.length + " done";
    body.cells.forEach(function (cell, index) {
      const td = root.querySelector('[data-cell="' + index + '"]');
      if (!td) return;
      const picture = cell.output_url || cell.snapshot_url;
      const img = td.querySelector(".sweep-picture");
      if (picture && img.getAttribute("src") !== picture) {
        img.src = picture;
        img.hidden = false;
        td.querySelector(".sweep-blank").hidden = true;
      }
      if (cell.url) td.querySelector(".sweep-link").href = cell.url;
      const badge = td.querySelector(".sweep-cell-status");
      badge.textContent = cell.status;
      badge.className = "badge status-" + cell.status + " sweep-cell-status";
      td.querySelector(".sweep-progress").value = cell.progress.fraction;
    });
    const cancel = $("sweep-cancel");
    if (cancel) cancel.hidden = !ACTIVE.includes(body.status);
  }

  function listen() {
    if (!ACTIVE.includes(sweep.status)) return;
    const source = new EventSource(root.dataset.eventsUrl);
    source.addEventListener("sweep", (e) => render(JSON.parse(e.data)));
    source.addEventListener("reconnect", function (e) {
      source.close();
      render(JSON.parse(e.data));
      listen();
    });
    source.onerror = function () {
      source.close();
      if (ACTIVE.includes(sweep.status)) poll();
    };
  }

  function poll() {
    clearTimeout(pollTimer);
    fetch(root.dataset.apiUrl, { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : null))
      .then(function (body) {
        if (body) render(body);
      })
      .catch(function () {})
      .finally(function () {
        if (ACTIVE.includes(sweep.status)) pollTimer = setTimeout(poll, 2000);
      });
  }

  const cancel = $("sweep-cancel");
  if (cancel) {
    cancel.addEventListener("click", function () {
      cancel.disabled = true;
      const token = document.querySelector('meta[name="csrf-token"]');
      fetch(root.dataset.cancelUrl, {
        method: "POST",
        headers: { Accept: "application/json", "X-CSRF-Token": token ? token.content : "" },
      })
        .then((r) => (r.ok ? r.json() : null))
        .then(function (body) {
          if (body) render(body);
        })
        .finally(function () {
          cancel.disabled = false;
        });
    });
  }

  listen();
})();
