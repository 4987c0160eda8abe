// Shown on every page: times written by the server in UTC (<time datetime="..." data-local>)
// are shown in the reader's own time zone and language.
(function () {
  "use strict";

  var formatter = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function localize(root) {
    (root || document).querySelectorAll("time[data-local][datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      el.textContent = formatter.format(when);
      el.title = when.toISOString();
    });
  }

  window.Impasto = window.Impasto || {};
  window.Impasto.localizeTimes = localize;
  window.Impasto.formatTime = function (iso) {
    var when = new Date(iso);
    return isNaN(when.getTime()) ? iso : formatter.format(when);
  };
  localize(document);
})();
