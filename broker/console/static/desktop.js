// hoshu console: a VNC desktop in the browser (noVNC), and a desktop recording played.
// Live (the engineer's, or an approver following it read-only): the page's WebSocket carries RFB (security type None: the broker holds the
// instrument's password); text messages on it are the broker's notices (grant ending),
// shown above the screen; the close reason says why the session ended.
// Player: the recording's server messages are fed to noVNC at the recorded pace
// through a channel that looks like a WebSocket; seeking replays from the start.
import RFB from "/console/static/novnc/core/rfb.js";
import keysyms from "/console/static/novnc/core/input/keysymdef.js";

const screen = document.getElementById("screen");
const state = document.getElementById("desktop-state");
const notices = document.getElementById("notices");

function setState(name, detail) {
  state.setAttribute("data-state", name);
  state.textContent = (state.getAttribute("data-" + name) || name) + (detail ? ": " + detail : "");
}

function notice(text) {
  const li = document.createElement("li");
  li.textContent = text;
  li.className = "notice";
  notices.appendChild(li);
}

class LiveChannel {
  constructor(url) {
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.readyState = "connecting";
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onclose = null;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => { this.readyState = "open"; if (this.onopen) { this.onopen(); } };
    ws.onmessage = (e) => {
      if (typeof e.data === "string") { notice(e.data); } else if (this.onmessage) { this.onmessage(e); }
    };
    ws.onerror = (e) => { if (this.onerror) { this.onerror(e); } };
    ws.onclose = (e) => {
      this.readyState = "closed";
      setState(e.code === 4403 ? "refused" : "ended", e.reason);
      if (this.onclose) { this.onclose(e); }
    };
  }
  send(data) { this.ws.send(data); }
  close() { this.ws.close(); }
}

// the recording: "HOSHU-RFB 1\n", a JSON line, then records (>I ms, 1 byte kind, >I length, data)
function parse(buf) {
  const bytes = new Uint8Array(buf);
  const view = new DataView(buf);
  let pos = 12;
  while (bytes[pos] !== 10) { pos += 1; }
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, pos)));
  pos += 1;
  const records = [];
  while (pos + 9 <= bytes.length) {
    const ms = view.getUint32(pos);
    const kind = String.fromCharCode(bytes[pos + 4]);
    const n = view.getUint32(pos + 5);
    pos += 9;
    if (kind === "S") { records.push({ ms: ms, data: bytes.slice(pos, pos + n) }); }
    pos += n;
  }
  return { header: header, records: records };
}

const HANDSHAKE = [
  new TextEncoder().encode("RFB 003.008\n"), new Uint8Array([1, 1]), new Uint8Array([0, 0, 0, 0]),
];

class PlaybackChannel {
  // noVNC's side of a recorded session: the handshake it expects, then the records
  constructor(records, from) {
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.readyState = "connecting";
    this.onopen = null;
    this.onmessage = null;
    this.onerror = null;
    this.onclose = null;
    this.records = records;
    this.sent = 0;  // client messages seen: version, security type, ClientInit
    this.next = 0;
    this.speed = 1;
    this.timer = null;
    this.from = from;  // ms to jump to: everything before it is fed at once
    this.clock0 = 0;
    setTimeout(() => { this.readyState = "open"; this.onopen(); this.push(HANDSHAKE[0]); }, 0);
  }
  push(data) { this.onmessage({ data: data.slice().buffer }); }
  send() {
    // answered later, not from inside noVNC's own send
    this.sent += 1;
    const n = this.sent;
    setTimeout(() => {
      if (n === 1) { this.push(HANDSHAKE[1]); }
      if (n === 2) { this.push(HANDSHAKE[2]); }
      if (n === 3) { this.start(); }
    }, 0);
  }
  now() { return this.base + (performance.now() - this.clock0) * this.speed; }
  start() {
    this.base = this.from;
    this.clock0 = performance.now();
    this.tick();
  }
  tick() {
    const t = this.now();
    while (this.next < this.records.length && this.records[this.next].ms <= t) {
      this.push(this.records[this.next].data);
      this.next += 1;
    }
    played(Math.min(t, total));
    if (this.next >= this.records.length) { setState("ended"); return; }
    const wait = (this.records[this.next].ms - t) / this.speed;
    this.timer = setTimeout(() => this.tick(), Math.max(0, Math.min(wait, 250)));
  }
  setSpeed(s) { this.base = this.now(); this.clock0 = performance.now(); this.speed = s; }
  close() { clearTimeout(this.timer); this.readyState = "closed"; }
}

let total = 0;
function played(ms) {
  const pos = document.getElementById("position");
  if (pos) { pos.value = String(Math.round(ms)); pos.setAttribute("data-ms", String(Math.round(ms))); }
}

function live() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const url = proto + "//" + location.host + screen.getAttribute("data-ws") +
    "&csrf=" + encodeURIComponent(screen.getAttribute("data-csrf"));
  const rfb = new RFB(screen, new LiveChannel(url), { shared: true });
  const watching = screen.hasAttribute("data-view-only");  // an approver following
  rfb.viewOnly = watching;
  rfb.scaleViewport = true;
  rfb.resizeSession = !watching;
  rfb.addEventListener("connect", () => { setState("live"); rfb.focus(); });
  if (!watching) { textInput(rfb); clipboardPanel(rfb); drivePanel(rfb); }
  window.hoshuDesktop = rfb;
}

// Text from an input method (Japanese): noVNC sends keys pressed on its screen, but an
// IME's committed text comes with no key event.  The engineer writes it in this field
// and sends it; each character goes to the instrument as a key press and release
// (its keysym: the legacy one where X has one, else Unicode).
function textInput(rfb) {
  const form = document.getElementById("text-input");
  const field = document.getElementById("text-to-send");
  if (!form || !field) { return; }
  form.hidden = false;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    for (const ch of field.value) {
      const keysym = keysyms.lookup(ch.codePointAt(0));
      rfb.sendKey(keysym, null, true);
      rfb.sendKey(keysym, null, false);
    }
    field.value = "";
    rfb.focus();
  });
}

// The clipboard, when the hospital allows it (the panel is on the page only then).  A
// page cannot read or fill the engineer's clipboard silently, so the panel shows the
// instrument's latest copy (noVNC's clipboard event), with a button that copies it to
// the engineer's clipboard (navigator.clipboard: a secure context only; without it the
// button is hidden and the text stays selectable), and sends its field's text to the
// instrument's clipboard (clipboardPasteFrom).  Its fields are outside noVNC's canvas,
// which alone takes keys for the instrument.  The status line counts characters.
function clipboardPanel(rfb) {
  const panel = document.getElementById("clipboard");
  if (!panel) { return; }
  const from = document.getElementById("clip-from");
  const copy = document.getElementById("clip-copy");
  const hint = document.getElementById("clip-from-hint");
  const form = document.getElementById("clip-send");
  const to = document.getElementById("clip-to");
  const status = document.getElementById("clip-status");
  function say(key, text) {
    const n = text === undefined ? 0 : Array.from(text).length;
    status.textContent = (panel.getAttribute("data-" + key) || key).replace("{n}", String(n));
  }
  let connected = false;
  rfb.addEventListener("connect", () => { connected = true; });
  rfb.addEventListener("disconnect", () => { connected = false; });
  rfb.addEventListener("clipboard", (e) => {
    from.value = e.detail.text;
    copy.disabled = false;
    say("received", e.detail.text);
  });
  copy.disabled = true;  // until the instrument has copied something
  if (window.isSecureContext && navigator.clipboard && navigator.clipboard.writeText) {
    copy.addEventListener("click", async () => {
      const text = from.value;
      try {
        await navigator.clipboard.writeText(text);
        say("copied", text);
      } catch (err) {
        from.focus();
        from.select();
        say("copy-failed");
      }
    });
  } else {
    copy.hidden = true;
    hint.textContent = hint.getAttribute("data-manual");
  }
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!connected) { say("not-live"); return; }
    const text = to.value;
    rfb.clipboardPasteFrom(text);
    say("sent", text);
    rfb.focus();  // the keys go back to the screen, for the paste there
  });
  panel.hidden = false;
}

// The RDP drive, when the hospital allows it (the panel is on the page only then): the
// files on the session's drive (listed on demand and after each upload), a file input
// whose file is put on the drive (a raw POST, its name percent-encoded in a header,
// the CSRF token in another), and a download link a file.
function drivePanel(rfb) {
  const panel = document.getElementById("drive");
  if (!panel) { return; }
  const url = panel.getAttribute("data-files");
  const csrf = screen.getAttribute("data-csrf");
  const form = document.getElementById("drive-put");
  const input = document.getElementById("drive-file");
  const refresh = document.getElementById("drive-refresh");
  const body = document.querySelector("#drive-files tbody");
  const status = document.getElementById("drive-status");
  const max = Number(panel.getAttribute("data-max")) || 0;
  const mib = String(Math.floor(max / 1048576));
  function say(key, values) {
    let text = panel.getAttribute("data-" + key) || key;
    for (const [k, v] of Object.entries(values || {})) { text = text.replace("{" + k + "}", v); }
    status.textContent = text;
  }
  async function why(r) {
    try { const j = await r.json(); return (j.error && j.error.message) || String(r.status); }
    catch (err) { return String(r.status); }
  }
  function size(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1048576) { return (n / 1024).toFixed(1) + " KiB"; }
    return (n / 1048576).toFixed(1) + " MiB";
  }
  async function list(quiet) {
    let r;
    try { r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }); }
    catch (err) { say("failed", { why: String(err) }); return; }
    if (r.status === 404) { say("not-live"); return; }
    if (!r.ok) { say("failed", { why: await why(r) }); return; }
    const files = (await r.json()).files || [];
    const label = panel.getAttribute("data-download");
    body.replaceChildren();
    for (const f of files) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = f.name;
      name.lang = "ja";
      const n = document.createElement("td");
      n.className = "num";
      n.textContent = size(f.size);
      const when = document.createElement("td");
      when.textContent = new Date(f.time).toLocaleString(document.documentElement.lang || undefined);
      const get = document.createElement("td");
      const a = document.createElement("a");
      a.href = url.replace("/drive?", "/drive/file?") + "&file=" + encodeURIComponent(f.name);
      a.setAttribute("download", f.name.split("/").pop());
      a.textContent = label;
      a.setAttribute("aria-label", label + ": " + f.name);
      get.append(a);
      tr.append(name, n, when, get);
      body.append(tr);
    }
    if (!quiet || !files.length) { say(files.length ? "listed" : "empty", { n: String(files.length) }); }
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = input.files && input.files[0];
    if (!file) { say("choose"); return; }
    if (max && file.size > max) { say("too-large", { mib }); return; }
    say("putting", { name: file.name });
    let r;
    try {
      r = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/octet-stream",
          "X-Hoshu-File-Name": encodeURIComponent(file.name),
          "X-Hoshu-CSRF": csrf,
        },
        body: file,
      });
    } catch (err) { say("failed", { why: String(err) }); return; }
    if (r.status === 413) { say("too-large", { mib }); return; }
    if (r.status === 404) { say("not-live"); return; }
    if (!r.ok) { say("failed", { why: await why(r) }); return; }
    input.value = "";
    await list(true);
    say("put", { name: file.name });
  });
  refresh.addEventListener("click", () => list(false));
  rfb.addEventListener("connect", () => list(true));
  panel.hidden = false;
}

async function player() {
  const r = await fetch(screen.getAttribute("data-recording"), { credentials: "same-origin" });
  if (!r.ok) { setState("failed"); return; }
  const rec = parse(await r.arrayBuffer());
  total = rec.records.length ? rec.records[rec.records.length - 1].ms : 0;
  const pos = document.getElementById("position");
  pos.max = String(total);
  document.getElementById("duration").textContent = (total / 1000).toFixed(1) + " s";
  let rfb = null;
  let channel = null;
  function play(from) {
    if (rfb) { rfb.disconnect(); }
    screen.replaceChildren();
    channel = new PlaybackChannel(rec.records, from);
    channel.speed = Number(document.getElementById("speed").value) || 1;
    rfb = new RFB(screen, channel, { shared: true });
    rfb.viewOnly = true;
    rfb.scaleViewport = true;
    rfb.addEventListener("connect", () => setState("playing"));
    window.hoshuDesktop = rfb;
  }
  document.getElementById("speed").addEventListener("change", (e) => {
    if (channel) { channel.setSpeed(Number(e.target.value) || 1); }
  });
  pos.addEventListener("change", () => play(Number(pos.value) || 0));
  play(0);
}

if (screen && state) {
  if (screen.hasAttribute("data-recording")) { player(); } else { live(); }
}
