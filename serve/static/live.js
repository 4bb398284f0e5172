"use strict";
// The live page. It uses only the public API: POST v1/sessions with the portrait, then the
// session's WebSocket: PCM16 sound out in 40 ms messages (from the microphone or a file, played
// in real time through an AudioWorklet), fragmented MP4 in, appended to a Media Source.

const PIECE_S = 0.04;  // seconds of sound per message
const $ = (id) => document.getElementById(id);
const show = (id, text) => { $(id).textContent = text; };
let portrait = null;  // the chosen image File
let session = null;   // the running session: {socket, stopSound, player, ...}

function choose(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { show("error", `${file.name} is not an image`); return; }
  portrait = file;
  $("preview").src = URL.createObjectURL(file);
  show("drop-text", "");
  show("error", "");
}
$("portrait").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  choose(e.dataTransfer.files[0]);
});

function token() { return $("token").value.trim(); }

// The API's error body names the field at fault: show that, not just a status.
async function openSession(sampleRate) {
  const form = new FormData();
  form.append("image", portrait);
  form.append("sample_rate", String(sampleRate));
  const headers = token() ? {Authorization: `Bearer ${token()}`} : {};
  const r = await fetch("v1/sessions", {method: "POST", body: form, headers});
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body.error;
    throw new Error(e ? `${e.field}: ${e.message}` : `the server answered ${r.status}`);
  }
  return body;
}

// Media segments appended in order; the player stays near the live edge and drops what it
// has played long ago, so a long session does not grow the page's memory.
class Player {
  constructor(video, mime) {
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
      throw new Error(`this browser cannot play ${mime} through Media Source Extensions`);
    }
    this.video = video;
    this.queue = [];
    this.source = new MediaSource();
    video.src = URL.createObjectURL(this.source);
    this.source.addEventListener("sourceopen", () => {
      this.buffer = this.source.addSourceBuffer(mime);
      this.buffer.addEventListener("updateend", () => this.pump());
      this.pump();
    }, {once: true});
  }

  append(bytes) { this.queue.push(bytes); this.pump(); }

  pump() {
    if (!this.buffer || this.buffer.updating) return;
    const v = this.video, b = this.buffer.buffered;
    if (b.length && v.currentTime - b.start(0) > 30) { this.buffer.remove(0, v.currentTime - 10); return; }
    if (b.length) {
      const end = b.end(b.length - 1);
      if (end - v.currentTime > 1.0) v.currentTime = end - 0.3;  // fell behind: catch up
      if (v.paused) v.play().catch(() => {});
    }
    if (this.queue.length) this.buffer.appendBuffer(this.queue.shift());
  }
}

// Sound from the microphone or a file → an AudioWorklet → 40 ms PCM16 messages on `send`.
// Returns the function that stops it.
async function startSound(context, kind, send) {
  await context.audioWorklet.addModule("live/pcm-capture.js");
  const capture = new AudioWorkletNode(context, "pcm-capture");
  let source, stream = null;
  if (kind === "mic") {
    stream = await navigator.mediaDevices.getUserMedia(
      {audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true}});
    source = context.createMediaStreamSource(stream);
  } else {
    const file = $("audio-file").files[0];
    if (!file) throw new Error("choose an audio file first");
    const sound = await context.decodeAudioData(await file.arrayBuffer());
    source = new AudioBufferSourceNode(context, {buffer: sound});
    source.start();
  }
  source.connect(capture);
  capture.connect(new GainNode(context, {gain: 0})).connect(context.destination);  // pulls it
  const piece = Math.round(context.sampleRate * PIECE_S);
  let held = new Float32Array(0);
  capture.port.onmessage = (e) => {
    const more = new Float32Array(held.length + e.data.length);
    more.set(held);
    more.set(e.data, held.length);
    held = more;
    while (held.length >= piece) {
      const pcm = new Int16Array(piece);
      for (let i = 0; i < piece; i++) pcm[i] = Math.max(-1, Math.min(1, held[i])) * 32767;
      send(pcm.buffer);
      held = held.slice(piece);
    }
  };
  return () => {
    capture.port.onmessage = null;
    if (stream) stream.getTracks().forEach((t) => t.stop());
    context.close();
  };
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function start() {
  show("error", "");
  if (!portrait) { show("error", "pick a portrait first"); return; }
  const kind = document.querySelector("input[name=source]:checked").value;
  $("start").disabled = true;
  show("state", "opening");
  const context = new AudioContext();  // made in the click, so the browser lets it run
  try {
    const opened = await openSession(context.sampleRate);
    const url = new URL(opened.ws_url, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (token()) url.searchParams.set("token", token());
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    const video = $("avatar");
    video.muted = kind === "mic";  // the avatar speaks with the voice it hears: no echo loop
    session = {socket, id: opened.session_id, latencies: [], chunks: 0, stopSound: null,
               player: new Player(video, opened.mime_type), firstSent: null};
    const s = session;
    socket.onmessage = (e) => {
      if (typeof e.data !== "string") { s.player.append(e.data); return; }
      const m = JSON.parse(e.data);
      if (m.type === "chunk") {
        s.chunks += 1;
        s.latencies.push(m.latency_s);
        if (s.latencies.length > 50) s.latencies.shift();
        if (s.chunks === 1) show("first", `${((performance.now() - s.firstSent) / 1000).toFixed(2)} s`);
        show("chunks", String(s.chunks));
        show("latency", `${Math.round(m.latency_s * 1000)} ms (median ${Math.round(median(s.latencies) * 1000)} ms)`);
      } else if (m.type === "error") {
        show("error", m.message);
      }
    };
    socket.onclose = (e) => {
      if (session === s && e.code !== 1000) end(`the session ended: ${e.reason || `code ${e.code}`}`);
    };
    await new Promise((ok, no) => {
      socket.onopen = ok;
      socket.onerror = () => no(new Error("the session's WebSocket did not open"));
    });
    s.stopSound = await startSound(context, kind, (pcm) => {
      if (socket.readyState !== WebSocket.OPEN) return;
      if (s.firstSent === null) s.firstSent = performance.now();
      socket.send(pcm);
    });
    show("state", "live");
    $("stop").disabled = false;
  } catch (e) {
    context.close();
    end(e.message);
  }
}

function end(message) {
  const s = session;
  session = null;
  if (s) {
    if (s.stopSound) s.stopSound();
    if (s.socket.readyState === WebSocket.OPEN) {
      s.socket.send(JSON.stringify({type: "close"}));
      s.socket.close(1000);
    }
  }
  if (message) show("error", message);
  show("state", message ? "stopped (error)" : "stopped");
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => end(""));
