/* hoshu console, auditor pages: starts asciinema-player from the page's data
   attributes (no inline script: the CSP allows only the broker's own files) and
   wires the print buttons. */
(function () {
  "use strict";

  document.querySelectorAll("[data-print]").forEach(function (button) {
    button.addEventListener("click", function () { window.print(); });
  });

  var box = document.getElementById("player");
  var state = document.getElementById("player-state");
  if (!box || !window.AsciinemaPlayer) {
    if (box && state) { state.textContent = box.dataset.failed; state.dataset.state = "failed"; }
    return;
  }
  var player = null;
  var speed = document.getElementById("speed");

  function setState(name, text) {
    state.dataset.state = name;
    if (text !== undefined) { state.textContent = text; }
  }

  function start(at, autoPlay) {
    if (player) { player.dispose(); box.textContent = ""; }
    setState("loading");
    var markers = [];
    try { markers = JSON.parse(box.dataset.markers || "[]"); } catch (e) { markers = []; }
    player = window.AsciinemaPlayer.create(box.dataset.src, box, {
      markers: markers,
      speed: speed ? Number(speed.value) : 1,
      startAt: at || 0,
      autoPlay: autoPlay,
      preload: true,
      fit: "width",
      idleTimeLimit: 2,
      terminalFontSize: "15px",
      controls: true
    });
    player.addEventListener("ready", function () { setState("ready", ""); });
    player.addEventListener("play", function () { setState("playing", ""); });
    player.addEventListener("playing", function () { setState("playing", ""); });
    player.addEventListener("pause", function () { setState("paused", ""); });
    player.addEventListener("ended", function () { setState("ended", ""); });
  }

  document.querySelectorAll("[data-seek]").forEach(function (button) {
    button.addEventListener("click", function () {
      if (!player) { return; }
      var to = Math.max(0, (player.getCurrentTime() || 0) + Number(button.dataset.seek));
      var d = player.getDuration();
      if (typeof d === "number" && to > d) { to = d; }
      player.seek(to);
    });
  });
  if (speed) {
    speed.addEventListener("change", function () {
      var at = player ? player.getCurrentTime() || 0 : 0;
      start(at, true);
    });
  }
  start(0, false);
})();
