/* Shared helpers for the viewer's pages. Everything from the store is inserted as text
   (textContent), never as HTML: span names, prompts and results are untrusted input. */
"use strict";

const LO = {
  /* Create an element with a class and text. */
  el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  },

  /* GET a JSON URL; throws an Error whose message is the server's own one-line reason. */
  async getJSON(url) {
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (err) {
      throw new Error("the viewer is not reachable (was `lucidic-otel ui` stopped?)");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const error = new Error((body && body.error) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  },

  duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 0.001) return (seconds * 1000).toFixed(2) + "ms";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + "ms";
    if (seconds < 60) return seconds.toFixed(2) + "s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m${String(Math.floor(seconds % 60)).padStart(2, "0")}s`;
    return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, "0")}m`;
  },

  millis(ms) {
    if (ms < 1) return ms.toFixed(2) + " ms";
    if (ms < 1000) return ms.toFixed(1) + " ms";
    return (ms / 1000).toFixed(2) + " s";
  },

  time(ns) {
    if (!ns) return "-";
    const date = new Date(ns / 1e6);
    const pad = (n) => String(n).padStart(2, "0");
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
      `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  },

  cost(value) {
    if (value === null || value === undefined) return "-";
    if (value > 0 && value < 0.00005) return "<0.0001";
    return Number(value).toFixed(4);
  },

  tokens(inp, out) {
    const show = (v) => (v === null || v === undefined ? "-" : String(v));
    return `${show(inp)}/${show(out)}`;
  },

  /* Outbox state in words: what reached Lucidic, what waits, what failed for good. */
  delivery(s) {
    const parts = [];
    if (s.pending) parts.push(`${s.pending} pending`);
    if (s.delivered) parts.push(`${s.delivered} delivered`);
    if (s.failed) parts.push(`${s.failed} failed`);
    return parts.length ? parts.join(", ") : "nothing to send";
  },

  /* A stable colour per service name (the same service keeps its colour on every page). */
  serviceColour(name) {
    let hash = 0;
    for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360}, 62%, 48%)`;
  },

  showProblem(message) {
    const box = document.getElementById("problem");
    if (!box) return;
    box.hidden = !message;
    box.textContent = message || "";
  },
};
