// How the job page words its figures: durations, loss values, the queue position and the
// progress line ("12 / 300 iterations, about 2 min left"; a clip counts frames).
(function () {
  "use strict";

  function duration(seconds) {
    let s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    s %= 60;
    if (m < 60) return m + " min" + (s ? " " + s + " s" : "");
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function number(value) {
    if (typeof value !== "number" || !isFinite(value)) return String(value);
    const size = Math.abs(value);
    if (size !== 0 && (size >= 1e5 || size < 1e-3)) return value.toExponential(2);
    return String(Number(value.toPrecision(3)));
  }

  function queueText(position) {
    if (position === 0) return "Next in line: it starts as soon as a worker is free.";
    if (typeof position === "number") {
      return position + (position === 1 ? " job" : " jobs") + " ahead of this one in the queue.";
    }
    return "Waiting in the queue.";
  }

  function progressText(j, unit) {
    const p = j.progress || {};
    let text = (p.iteration || 0) + " / " + (p.iterations || 0) + " " + unit + "s";
    if (j.status === "running" && typeof p.eta_seconds === "number") {
      text += ", about " + duration(p.eta_seconds) + " left";
    } else if (j.status === "succeeded" && j.started_at && j.finished_at) {
      const took = (Date.parse(j.finished_at) - Date.parse(j.started_at)) / 1000;
      text += isFinite(took) ? ", done in " + duration(took) : ", done";
    } else if (j.status === "canceled" || j.status === "failed") {
      text += ", " + j.status;
    } else if (j.status === "queued") {
      text += ", not started yet";
    }
    return text;
  }

  window.Impasto = window.Impasto || {};
  window.Impasto.format = { duration, number, queueText, progressText };
})();
