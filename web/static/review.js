// The review viewer: a map layer over the analysed crop (target, opacity, original view) and
// one drawing canvas per pattern; on submit each drawn canvas travels as a PNG data URL.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  if (!viewer) return;
  const layer = document.getElementById("layer");
  const target = document.getElementById("target");
  const opacity = document.getElementById("opacity");
  const original = document.getElementById("original");
  const brushFor = document.getElementById("brush-pattern");
  const canvases = {};
  viewer.querySelectorAll("canvas[data-pattern]").forEach(function (c) { canvases[c.dataset.pattern] = c; });
  const drawn = {};

  function showLayer() {
    if (!layer) return;
    if (target) layer.src = viewer.dataset.layerBase + encodeURIComponent(target.value) + (viewer.dataset.layerSuffix || "");
    layer.style.opacity = original && original.checked ? 0 : (opacity ? opacity.value / 100 : 0.6);
  }
  [target, opacity, original].forEach(function (el) { if (el) el.addEventListener("input", showLayer); });
  if (original) original.addEventListener("change", showLayer);
  showLayer();

  function current() { return canvases[brushFor.value]; }
  function showCanvas() {
    Object.keys(canvases).forEach(function (code) {
      canvases[code].style.visibility = code === brushFor.value ? "visible" : "hidden";
    });
  }
  if (brushFor) { brushFor.addEventListener("change", showCanvas); showCanvas(); }

  let down = false;
  function paint(ev) {
    const c = current();
    if (!c) return;
    const box = c.getBoundingClientRect();
    const x = (ev.clientX - box.left) * c.width / box.width;
    const y = (ev.clientY - box.top) * c.height / box.height;
    const ctx = c.getContext("2d");
    ctx.fillStyle = "rgba(0, 220, 255, 0.5)";
    ctx.beginPath();
    ctx.arc(x, y, Math.max(2, c.width / 28), 0, 2 * Math.PI);
    ctx.fill();
    drawn[brushFor.value] = true;
    const present = document.querySelector('input[name="pattern_' + brushFor.value + '"][value="present"]');
    if (present) present.checked = true;
  }
  Object.values(canvases).forEach(function (c) {
    c.addEventListener("pointerdown", function (ev) { down = true; c.setPointerCapture(ev.pointerId); paint(ev); });
    c.addEventListener("pointermove", function (ev) { if (down) paint(ev); });
    c.addEventListener("pointerup", function () { down = false; });
  });
  const clear = document.getElementById("clear-region");
  if (clear) clear.addEventListener("click", function () {
    const c = current();
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
    delete drawn[brushFor.value];
  });
  const form = document.getElementById("review-form");
  // After a refused submit the page comes back with the regions already drawn: paint them.
  Object.keys(canvases).forEach(function (code) {
    const input = form.querySelector('input[name="region_' + code + '"]');
    if (!input || !input.value.startsWith("data:image/png;base64,")) return;
    const img = new Image();
    img.onload = function () { canvases[code].getContext("2d").drawImage(img, 0, 0); };
    img.src = input.value;
    if (!Object.keys(drawn).length && brushFor) { brushFor.value = code; showCanvas(); }
    drawn[code] = true;
  });
  form.addEventListener("submit", function () {
    Object.keys(drawn).forEach(function (code) {
      const input = form.querySelector('input[name="region_' + code + '"]');
      if (input) input.value = canvases[code].toDataURL("image/png");
    });
  });
})();
