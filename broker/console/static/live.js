// hoshu console: show a live terminal session as text (read-only).
// Reads /console/sessions/{id}/stream with fetch (same-origin cookie) and renders the
// bytes as plain text: ANSI escape sequences are dropped, carriage return goes back to
// the start of the line, backspace removes a character. Colours, cursor moves and
// full-screen programs are not reproduced: the recording is the faithful copy.
"use strict";
(function () {
  var term = document.getElementById("term");
  var state = document.getElementById("term-state");
  if (!term || !state) { return; }
  var MAX_LINES = 2000;
  var lines = [""];
  var col = 0;
  var pending = "";
  // CSI ... final, OSC ... BEL/ST, other ESC x; an unfinished one waits for more bytes
  var ESCAPE = /\x1b(?:\[[0-?]*[ -\/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[P^_][^\x1b]*\x1b\\|[()*+][0-~]|[@-Z\\-_=>78])/g;

  function setState(name) {
    state.setAttribute("data-state", name);
    state.textContent = state.getAttribute("data-" + name) || name;
  }

  function put(text) {
    for (var i = 0; i < text.length; i++) {
      var ch = text[i];
      var line = lines[lines.length - 1];
      if (ch === "\n") {
        lines.push(""); col = 0;
        if (lines.length > MAX_LINES) { lines.shift(); }
      } else if (ch === "\r") {
        col = 0;
      } else if (ch === "\b") {
        if (col > 0) { col -= 1; }
      } else if (ch === "\t") {
        var pad = 8 - (col % 8);
        put(" ".repeat(pad));
      } else if (ch >= " " || ch > "\x7f") {
        lines[lines.length - 1] = line.slice(0, col) + ch + line.slice(col + 1);
        col += 1;
      }
    }
  }

  function feed(chunk) {
    var text = pending + chunk;
    pending = "";
    var cut = text.lastIndexOf("\x1b");
    if (cut !== -1 && cut > text.length - 64) {
      var tail = text.slice(cut);
      ESCAPE.lastIndex = 0;
      var m = ESCAPE.exec(tail);
      if (!m || m.index !== 0) { pending = tail; text = text.slice(0, cut); }
    }
    put(text.replace(ESCAPE, "").replace(/[\x00-\x07\x0b\x0c\x0e-\x1f\x7f]/g, function (c) {
      return c === "\b" ? c : "";
    }));
    var atEnd = term.scrollTop + term.clientHeight >= term.scrollHeight - 4;
    term.textContent = lines.join("\n");
    if (atEnd) { term.scrollTop = term.scrollHeight; }
  }

  var url = term.getAttribute("data-stream");
  fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
    if (!response.ok || !response.body) { setState("failed"); return null; }
    setState("live");
    var reader = response.body.getReader();
    var decoder = new TextDecoder("utf-8");
    function next() {
      return reader.read().then(function (part) {
        if (part.done) { feed(decoder.decode()); setState("ended"); return null; }
        feed(decoder.decode(part.value, { stream: true }));
        return next();
      });
    }
    return next();
  }).catch(function () { setState("failed"); });
})();
