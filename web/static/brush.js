// The brush of the new-job form: paint, over the photo, where each style goes. Each style has
// a mask (a canvas at the photo's aspect, white strokes on nothing); the painted masks go with
// the form as the `style_mask` files, one grey-scale PNG per style in the styles' order, white
// where the style applies and black elsewhere. Nothing painted: no masks are sent, and each
// style covers the whole picture. Mouse, pen and touch all arrive as pointer events.
(function () {
  "use strict";

  var form = document.querySelector("form.job-form");
  var panel = document.getElementById("brush");
  if (!form || !panel) return;
  var content = document.getElementById("field-content");
  var styleFiles = document.getElementById("field-style");
  var maskFiles = document.getElementById("field-style_mask");
  var list = document.getElementById("brush-styles");
  var canvas = document.getElementById("brush-canvas");
  var size = document.getElementById("brush-size");
  var eraser = document.getElementById("brush-eraser");
  var status = document.getElementById("brush-status");
  var waiting = document.getElementById("brush-waiting");
  var view = canvas.getContext("2d");

  // Masks are at most this long (the service checks a mask of up to a megapixel in full at once).
  var MAX_SIDE = 800;
  var COLOURS = ["#e03131", "#1971c2", "#2f9e44", "#f08c00", "#9c36b5", "#0c8599", "#e8590c", "#5f3dc4"];

  var photo = null; // the decoded photo (an Image)
  var photoUrl = null;
  var styles = []; // [{name, mask: canvas, painted: bool}]
  var current = 0;
  var stroke = null; // {id, x, y} while a pointer paints
  var sent = false; // the painted masks are attached: the next submit goes through
  var frame = 0;

  // Uploaded paintings, else the built-in one chosen (form.js keeps the two from both being set).
  function styleNames() {
    var uploaded = Array.prototype.map.call((styleFiles && styleFiles.files) || [], function (f) { return f.name; });
    if (uploaded.length) return uploaded;
    var chosen = form.querySelector('input[name="style_preset"]:checked');
    if (!chosen || !chosen.value) return [];
    var title = form.querySelector('label[for="' + chosen.id + '"] .preset-title');
    return [title ? title.textContent : chosen.value];
  }

  function newMask() {
    var mask = document.createElement("canvas");
    mask.width = canvas.width;
    mask.height = canvas.height;
    return mask;
  }

  // Rebuild the styles (their masks cleared) from the photo and the chosen paintings.
  function reset() {
    var names = photo ? styleNames() : [];
    panel.hidden = names.length === 0;
    waiting.hidden = names.length > 0;
    styles = names.map(function (name) { return { name: name, mask: newMask(), painted: false }; });
    current = 0;
    list.replaceChildren();
    styles.forEach(function (style, index) {
      var label = document.createElement("label");
      label.className = "brush-style";
      var radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "brush-style";
      radio.setAttribute("form", "brush-no-form"); // no such form: a choice of the page, never submitted
      radio.id = "brush-style-" + index;
      radio.checked = index === 0;
      radio.addEventListener("change", function () { if (radio.checked) { current = index; draw(); } });
      var swatch = document.createElement("span");
      swatch.className = "brush-swatch";
      swatch.style.backgroundColor = COLOURS[index % COLOURS.length];
      label.append(radio, swatch, document.createTextNode(" " + (index + 1) + ": " + style.name));
      list.append(label);
    });
    draw();
  }

  function loadPhoto() {
    var file = content && content.files && content.files[0];
    if (photoUrl) URL.revokeObjectURL(photoUrl);
    photo = null;
    photoUrl = null;
    if (!file || !/^image\//.test(file.type)) { reset(); return; }
    photoUrl = URL.createObjectURL(file);
    var image = new Image();
    image.onload = function () {
      var scale = Math.min(1, MAX_SIDE / Math.max(image.naturalWidth, image.naturalHeight));
      canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
      photo = image;
      reset();
    };
    image.onerror = function () { reset(); };
    image.src = photoUrl;
  }

  // The photo, then each style's region in its colour (the one being painted stronger).
  function render() {
    frame = 0;
    if (!photo) return;
    view.globalAlpha = 1;
    view.drawImage(photo, 0, 0, canvas.width, canvas.height);
    styles.forEach(function (style, index) {
      if (!style.painted) return;
      var tint = newMask();
      var t = tint.getContext("2d");
      t.drawImage(style.mask, 0, 0);
      t.globalCompositeOperation = "source-in";
      t.fillStyle = COLOURS[index % COLOURS.length];
      t.fillRect(0, 0, tint.width, tint.height);
      view.globalAlpha = index === current ? 0.6 : 0.35;
      view.drawImage(tint, 0, 0);
    });
    view.globalAlpha = 1;
    var painted = styles.filter(function (s) { return s.painted; }).length;
    status.textContent = painted === 0
      ? "Nothing painted: each style covers the whole picture."
      : "Painted regions for " + painted + " of " + styles.length + (styles.length === 1 ? " style" : " styles") +
        (painted < styles.length ? "; a style with no region is not used." : ".") +
        " Where no style is painted the photo is kept.";
  }

  function draw() {
    if (!frame) frame = window.requestAnimationFrame(render);
  }

  function paint(from, to) {
    var style = styles[current];
    if (!style) return;
    var c = style.mask.getContext("2d");
    c.globalCompositeOperation = eraser.checked ? "destination-out" : "source-over";
    c.strokeStyle = "#fff";
    c.lineWidth = Number(size.value);
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    c.moveTo(from.x, from.y);
    c.lineTo(to.x + (from.x === to.x && from.y === to.y ? 0.01 : 0), to.y); // a dot is a tiny line
    c.stroke();
    if (!eraser.checked) style.painted = true;
    sent = false;
    draw();
  }

  function point(event) {
    var box = canvas.getBoundingClientRect();
    return {
      x: (event.clientX - box.left) * (canvas.width / box.width),
      y: (event.clientY - box.top) * (canvas.height / box.height),
    };
  }

  canvas.addEventListener("pointerdown", function (event) {
    if (!styles.length || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    var at = point(event);
    stroke = { id: event.pointerId, at: at };
    paint(at, at);
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!stroke || event.pointerId !== stroke.id) return;
    var at = point(event);
    paint(stroke.at, at);
    stroke.at = at;
  });
  function end(event) {
    if (stroke && event.pointerId === stroke.id) stroke = null;
  }
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  document.getElementById("brush-fill").addEventListener("click", function () {
    var style = styles[current];
    if (!style) return;
    var c = style.mask.getContext("2d");
    c.globalCompositeOperation = "source-over";
    c.fillStyle = "#fff";
    c.fillRect(0, 0, style.mask.width, style.mask.height);
    style.painted = true;
    sent = false;
    draw();
  });
  document.getElementById("brush-clear").addEventListener("click", function () {
    var style = styles[current];
    if (!style) return;
    style.mask.getContext("2d").clearRect(0, 0, style.mask.width, style.mask.height);
    style.painted = false;
    sent = false;
    draw();
  });

  // A mask as the service reads it: opaque, white where painted, black elsewhere.
  function maskBlob(style) {
    var out = newMask();
    var c = out.getContext("2d");
    c.fillStyle = "#000";
    c.fillRect(0, 0, out.width, out.height);
    c.drawImage(style.mask, 0, 0);
    return new Promise(function (resolve) { out.toBlob(resolve, "image/png"); });
  }

  form.addEventListener("submit", function (event) {
    if (sent || !maskFiles || !styles.some(function (s) { return s.painted; })) return;
    if (typeof DataTransfer === "undefined") return; // no way to attach files: uploaded masks, if any, go
    event.preventDefault();
    Promise.all(styles.map(maskBlob)).then(function (blobs) {
      var files = new DataTransfer();
      blobs.forEach(function (blob, index) {
        files.items.add(new File([blob], "mask-" + (index + 1) + ".png", { type: "image/png" }));
      });
      maskFiles.files = files.files;
      sent = true;
      HTMLFormElement.prototype.submit.call(form); // form.submit is the button named "submit"
    });
  });

  if (content) content.addEventListener("change", loadPhoto);
  // After form.js's own handlers, which clear the uploads when a built-in style is picked.
  function resetLater() { window.setTimeout(reset, 0); }
  if (styleFiles) styleFiles.addEventListener("change", resetLater);
  form.querySelectorAll('input[name="style_preset"]').forEach(function (radio) {
    radio.addEventListener("change", resetLater);
  });
  size.addEventListener("input", draw);
  loadPhoto(); // a photo still chosen when the page comes back from history
})();
