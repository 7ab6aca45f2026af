// Drag-and-drop uploads with a progress bar. Without this script the form still posts
// (its token is in the query string); with it, files go by XHR with the token in a header.
(function () {
  "use strict";
  var zone = document.querySelector("[data-upload-zone]");
  if (!zone || !window.XMLHttpRequest || !window.FormData) { return; }
  var form = zone.closest("form");
  var input = zone.querySelector("input[type=file]");
  var progress = zone.querySelector(".progress");
  var bar = zone.querySelector(".progress-bar");
  var results = zone.querySelector("[data-upload-results]");

  function line(text, cls) {
    var item = document.createElement("li");
    item.className = cls || "";
    item.textContent = text; // names are shown as text, never parsed as HTML
    results.appendChild(item);
  }

  function show(reply) {
    (reply.files || []).forEach(function (file) {
      if (file.ok) {
        line(file.name + " — stored. MD5 " + file.md5 + ", SHA-256 " + file.sha256, "fingerprint text-success");
      } else {
        line(file.name + " — not stored: " + file.error, "text-danger");
      }
    });
  }

  function send(files) {
    if (!files.length) { return; }
    var data = new FormData();
    for (var i = 0; i < files.length; i++) { data.append("files", files[i], files[i].name); }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", zone.dataset.url);
    xhr.setRequestHeader("X-CSRFToken", zone.dataset.csrf);
    xhr.setRequestHeader("Accept", "application/json");
    progress.classList.remove("d-none");
    bar.style.width = "0%";
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) { bar.style.width = Math.round(100 * event.loaded / event.total) + "%"; }
    });
    xhr.addEventListener("load", function () {
      bar.style.width = "100%";
      var reply = null;
      try { reply = JSON.parse(xhr.responseText); } catch (e) { reply = null; }
      if (reply) { show(reply); } else { line("The upload failed (HTTP " + xhr.status + "). Reload the page and try again.", "text-danger"); }
      if (xhr.status === 200) { line("Reload the page to see the files in the folder.", "text-muted"); }
    });
    xhr.addEventListener("error", function () { line("The connection was lost; nothing half-sent was kept.", "text-danger"); });
    xhr.send(data);
  }

  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("dragging"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    send(event.dataTransfer.files);
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    send(input.files);
  });
}());
