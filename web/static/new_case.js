// The GP's instant check: when images are picked, show each one with the scope gate's
// verdict and retake hints before the case is submitted (POST /cases/new/check, one image
// at a time; nothing is stored). The verdict at analysis time is the one that counts.
(function () {
  "use strict";
  var form = document.getElementById("new-case-form");
  if (!form) { return; }
  var token = form.querySelector("input[name=csrf_token]").value;
  var url = form.getAttribute("data-check-url");
  var LABELS = {
    dermoscopic: "Dermoscopic: the AI can read it",
    clinical: "Not dermoscopic: clinical photo",
    not_a_lesion: "No single lesion",
    not_skin: "Not a photograph of skin",
    unusable: "Unusable"
  };

  function show(list, file) {
    var item = document.createElement("li");
    item.className = "check-result";
    item.setAttribute("data-file", file.name);
    item.setAttribute("data-verdict", "pending");
    var img = document.createElement("img");
    img.alt = "preview of " + file.name;
    img.src = URL.createObjectURL(file);
    var text = document.createElement("div");
    text.className = "check-text";
    text.textContent = file.name + ": checking…";
    item.appendChild(img);
    item.appendChild(text);
    list.appendChild(item);
    var body = new FormData();
    body.append("csrf_token", token);
    body.append("image", file);
    fetch(url, {method: "POST", body: body, credentials: "same-origin",
                headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, body: j}; }); })
      .then(function (res) {
        if (!res.ok) {
          item.setAttribute("data-verdict", "error");
          text.textContent = file.name + ": check unavailable (" + (res.body.message || "error") + ")";
          return;
        }
        var v = res.body;
        item.setAttribute("data-verdict", v.verdict);
        item.classList.add(v.applicable ? "check-ok" : "check-warn");
        text.textContent = "";
        var head = document.createElement("strong");
        head.textContent = file.name + ": " + (LABELS[v.verdict] || v.verdict);
        text.appendChild(head);
        var reason = document.createElement("p");
        reason.textContent = v.reason;
        text.appendChild(reason);
        (v.hints || []).forEach(function (h) {
          var p = document.createElement("p");
          p.className = "hint";
          p.textContent = "Retake hint: " + h;
          text.appendChild(p);
        });
      })
      .catch(function () {
        item.setAttribute("data-verdict", "error");
        text.textContent = file.name + ": check unavailable; you can still submit";
      });
  }

  Array.prototype.forEach.call(form.querySelectorAll("input[type=file]"), function (input) {
    var list = document.createElement("ul");
    list.className = "checks";
    list.setAttribute("data-for", input.name);
    input.parentNode.parentNode.insertBefore(list, input.parentNode.nextSibling);
    input.addEventListener("change", function () {
      list.textContent = "";
      Array.prototype.slice.call(input.files, 0, 6).forEach(function (f) { show(list, f); });
    });
  });
}());
