// The new-job form: previews of the chosen files, and the style choice kept consistent
// (uploading paintings selects "Upload my own"; picking a built-in style clears the uploads),
// since the service refuses a job that names both.
(function () {
  "use strict";

  var form = document.querySelector("form.job-form");
  if (!form) return;
  var content = document.getElementById("field-content");
  var styles = document.getElementById("field-style");
  var uploadChoice = document.getElementById("field-style_preset-upload");
  var submit = document.getElementById("submit");
  var urls = {};

  function showPreviews(input, boxId) {
    var box = document.getElementById(boxId);
    if (!box) return;
    (urls[boxId] || []).forEach(function (url) { URL.revokeObjectURL(url); });
    urls[boxId] = [];
    box.replaceChildren();
    Array.prototype.forEach.call(input.files || [], function (file) {
      if (!/^image\//.test(file.type)) return;
      var url = URL.createObjectURL(file);
      urls[boxId].push(url);
      var figure = document.createElement("figure");
      var img = document.createElement("img");
      img.src = url;
      img.alt = "";
      var caption = document.createElement("figcaption");
      caption.textContent = file.name;
      figure.append(img, caption);
      box.append(figure);
    });
  }

  if (content) {
    content.addEventListener("change", function () { showPreviews(content, "content-preview"); });
  }
  if (styles) {
    styles.addEventListener("change", function () {
      if (styles.files && styles.files.length && uploadChoice) uploadChoice.checked = true;
      showPreviews(styles, "style-preview");
    });
  }
  form.querySelectorAll('input[name="style_preset"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      if (radio.checked && radio.value && styles && styles.value) {
        styles.value = "";
        showPreviews(styles, "style-preview");
      }
    });
  });

  // One submission at a time; the button comes back if the page is shown again from history.
  form.addEventListener("submit", function () {
    if (!submit) return;
    submit.disabled = true;
    submit.textContent = "Uploading…";
  });
  window.addEventListener("pageshow", function () {
    if (!submit) return;
    submit.disabled = false;
    submit.textContent = "Paint it";
  });
})();
