/* The session page: a waterfall of every span on one time axis (nested by parent, coloured
   by service) and the selected span's detail; an open session is refreshed while it records. */
"use strict";

(function () {
  const POLL_MS = 3000;
  const sessionId = decodeURIComponent(location.pathname.split("/")[2] || "");
  const base = "/api/sessions/" + encodeURIComponent(sessionId);
  let rows = [];
  let selected = null;
  let lastCount = -1;
  let lastStatus = "";

  function fact(list, label, value, cls) {
    list.appendChild(LO.el("dt", null, label));
    list.appendChild(LO.el("dd", cls, value));
  }

  function renderHead(s, wf) {
    document.title = `${s.name || s.session_id} - lucidic-otel`;
    document.getElementById("session-name").textContent = s.name || "(unnamed session)";
    document.getElementById("session-id").textContent = s.session_id;
    const facts = document.getElementById("session-facts");
    facts.replaceChildren();
    fact(facts, "status", s.status_text, "badge status-" + s.status);
    fact(facts, "started", LO.time(s.started_ns));
    fact(facts, "duration", LO.duration(s.duration_s));
    const traces = wf.traces.length;
    fact(facts, "spans", `${s.span_count} in ${traces} trace${traces === 1 ? "" : "s"}`);
    fact(facts, "LLM calls", s.llm_calls);
    fact(facts, "tokens in/out", LO.tokens(s.input_tokens, s.output_tokens));
    fact(facts, "cost USD", LO.cost(s.cost));
    fact(facts, "delivery", LO.delivery(s));
    const legend = document.getElementById("legend");
    legend.replaceChildren();
    for (const name of wf.services) {
      const item = LO.el("span", "legend-item");
      item.dataset.service = name;
      const swatch = LO.el("span", "swatch");
      swatch.style.background = LO.serviceColour(name);
      item.append(swatch, document.createTextNode(name));
      legend.appendChild(item);
    }
    document.getElementById("live").hidden = s.status !== "open";
  }

  function renderAxis(total) {
    const axis = document.getElementById("axis");
    axis.replaceChildren(LO.el("div", "axis-label", "span"));
    const scale = LO.el("div", "axis-scale");
    for (let i = 0; i <= 4; i += 1) {
      const tick = LO.el("span", "tick", LO.millis((total * i) / 4));
      tick.style.left = `${i * 25}%`;
      scale.appendChild(tick);
    }
    axis.appendChild(scale);
  }

  function mark(parent, cls, text, title) {
    const node = LO.el("span", "mark " + cls, text);
    if (title) node.title = title;
    parent.appendChild(node);
  }

  /* The API sends rows as arrays (see views.COLUMNS) with services and traces by index. */
  function decodeRows(wf) {
    const c = {};
    wf.columns.forEach((name, i) => { c[name] = i; });
    return wf.rows.map((a) => {
      const flags = a[c.flags];
      return {
        span_id: a[c.span_id], trace_id: wf.traces[a[c.trace]], parent_row: a[c.parent_row],
        depth: a[c.depth], name: a[c.name], kind: a[c.kind], service: wf.services[a[c.service]],
        pid: a[c.pid], offset_ms: a[c.offset_us] / 1000, duration_ms: a[c.duration_us] / 1000,
        status: a[c.status], error: (flags & 1) !== 0, llm: (flags & 2) !== 0,
        tool: (flags & 4) !== 0, entry: (flags & 8) !== 0, model: a[c.model],
        remote_parent: a[c.remote_parent],
        via_baggage_from: a[c.via_service] === null ? null : wf.services[a[c.via_service]],
      };
    });
  }

  /* Above this many spans only the rows in view are in the DOM (fixed-height rows over one
     tall spacer): a 5,000-span session then renders as fast as a 50-span one. */
  const VIRTUAL_ABOVE = 300;
  const ROW_PX = 30;
  let total = 1;

  function buildRow(r, index) {
    const row = LO.el("div", "row" + (r.error ? " error" : "") + (r.span_id === selected ? " selected" : ""));
    row.setAttribute("role", "listitem");
    row.dataset.index = String(index);
    row.dataset.spanId = r.span_id;
    row.dataset.service = r.service;
    row.dataset.kind = r.kind;
    if (r.llm) row.dataset.llm = "1";
    if (r.tool) row.dataset.tool = "1";
    const label = LO.el("div", "label");
    label.style.paddingLeft = `${0.3 + Math.min(r.depth, 40) * 0.9}em`;
    label.appendChild(LO.el("span", "span-name", r.name));
    if (r.entry) mark(label, "entry", "entry", "the request entered the session through this span");
    if (r.via_baggage_from) {
      mark(label, "baggage", `via baggage from ${r.via_baggage_from}`,
        "this service joined the session through the W3C baggage of its caller's request");
    }
    if (r.remote_parent) {
      mark(label, "remote", "remote parent",
        `parent span ${r.remote_parent} is not recorded in this session`);
    }
    if (r.llm) mark(label, "llm", r.model || "LLM");
    if (r.tool) mark(label, "tool", "tool");
    if (r.error) mark(label, "err", "error");
    row.appendChild(label);
    const track = LO.el("div", "track");
    const bar = LO.el("div", "bar");
    bar.style.left = `${(r.offset_ms / total) * 100}%`;
    bar.style.width = `max(2px, ${(r.duration_ms / total) * 100}%)`;
    bar.style.background = LO.serviceColour(r.service);
    bar.title = `${r.service} pid ${r.pid ?? "?"}: ${LO.millis(r.duration_ms)}`;
    track.appendChild(bar);
    track.appendChild(LO.el("span", "bar-text", `${LO.millis(r.duration_ms)} · ${r.service}`));
    row.appendChild(track);
    return row;
  }

  function renderWindow() {
    const container = document.getElementById("waterfall");
    const spacer = container.firstChild;
    const first = Math.max(0, Math.floor(container.scrollTop / ROW_PX) - 20);
    const last = Math.min(rows.length, first + Math.ceil(container.clientHeight / ROW_PX) + 40);
    const fragment = document.createDocumentFragment();
    for (let i = first; i < last; i += 1) {
      const row = buildRow(rows[i], i);
      row.classList.add("virtual");
      row.style.top = `${i * ROW_PX}px`;
      fragment.appendChild(row);
    }
    spacer.replaceChildren(fragment);
  }

  function renderWaterfall(wf) {
    rows = decodeRows(wf);
    total = wf.total_us / 1000 || 1;
    renderAxis(wf.total_us / 1000);
    const container = document.getElementById("waterfall");
    if (rows.length > VIRTUAL_ABOVE) {
      const spacer = LO.el("div", "spacer");
      spacer.style.height = `${rows.length * ROW_PX}px`;
      container.replaceChildren(spacer);
      container.dataset.virtual = String(rows.length);
      container.onscroll = () => requestAnimationFrame(renderWindow);
      renderWindow();
      return;
    }
    container.onscroll = null;
    const fragment = document.createDocumentFragment();
    rows.forEach((r, index) => fragment.appendChild(buildRow(r, index)));
    container.replaceChildren(fragment);
    if (!rows.length) container.appendChild(LO.el("p", "empty", "No spans stored for this session."));
  }

  function section(parent, title) {
    const box = LO.el("section", "box");
    box.appendChild(LO.el("h3", null, title));
    parent.appendChild(box);
    return box;
  }

  function pre(parent, value, cls) {
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    parent.appendChild(LO.el("pre", cls, text));
  }

  function table(parent, object, cls) {
    const entries = Object.entries(object || {});
    if (!entries.length) { parent.appendChild(LO.el("p", "dim", "none")); return; }
    const t = LO.el("table", "kv " + (cls || ""));
    for (const [key, value] of entries.sort((a, b) => a[0].localeCompare(b[0]))) {
      const tr = LO.el("tr");
      tr.appendChild(LO.el("th", null, key));
      tr.appendChild(LO.el("td", null, typeof value === "string" ? value : JSON.stringify(value)));
      t.appendChild(tr);
    }
    parent.appendChild(t);
  }

  function messageText(m) {
    if (m.content !== null && m.content !== undefined) {
      return typeof m.content === "string" ? m.content : JSON.stringify(m.content, null, 2);
    }
    return null;
  }

  function toolCalls(parent, calls) {
    for (const call of calls || []) {
      const node = LO.el("div", "tool-call");
      node.appendChild(LO.el("span", "tool-name", `${call.name || "?"}(`));
      node.appendChild(LO.el("code", null, call.arguments === undefined || call.arguments === null
        ? "" : JSON.stringify(call.arguments)));
      node.appendChild(LO.el("span", "tool-name", ")"));
      if (call.id) node.appendChild(LO.el("span", "dim small", ` ${call.id}`));
      parent.appendChild(node);
    }
  }

  function renderLLM(pane, llm) {
    const box = section(pane, "LLM call");
    box.id = "llm";
    const facts = LO.el("dl", "facts");
    fact(facts, "model", llm.model || "-");
    if (llm.provider) fact(facts, "provider", llm.provider);
    fact(facts, "input tokens", llm.input_tokens ?? "-", "tokens-in");
    fact(facts, "output tokens", llm.output_tokens ?? "-", "tokens-out");
    fact(facts, "cost USD", llm.cost === null || llm.cost === undefined ? "-" : `$${Number(llm.cost).toFixed(6)}`);
    box.appendChild(facts);
    const messages = LO.el("div", "messages");
    messages.id = "messages";
    box.appendChild(LO.el("h4", null, "Messages"));
    for (const m of llm.messages) {
      const node = LO.el("div", "message role-" + (m.role || "unknown"));
      node.appendChild(LO.el("div", "role", m.role || "?"));
      const text = messageText(m);
      if (text !== null) node.appendChild(LO.el("div", "content", text));
      toolCalls(node, m.tool_calls);
      if (text === null && !(m.tool_calls || []).length) node.appendChild(LO.el("div", "dim", "(no content recorded)"));
      messages.appendChild(node);
    }
    if (!llm.messages.length) messages.appendChild(LO.el("p", "dim", "No messages recorded (content capture may be off)."));
    box.appendChild(messages);
    box.appendChild(LO.el("h4", null, "Output"));
    const output = LO.el("div", "message role-assistant output");
    output.id = "output";
    if (llm.output !== null && llm.output !== undefined) output.appendChild(LO.el("div", "content", typeof llm.output === "string" ? llm.output : JSON.stringify(llm.output, null, 2)));
    toolCalls(output, llm.tool_calls);
    if (!output.childNodes.length) output.appendChild(LO.el("div", "dim", "(no output recorded)"));
    box.appendChild(output);
  }

  function renderDetail(d, row) {
    const pane = document.getElementById("detail");
    pane.replaceChildren();
    const s = d.span;
    const head = LO.el("div", "detail-head");
    head.appendChild(LO.el("h2", null, s.name));
    const where = LO.el("div", "dim");
    where.textContent = `${s.service || "?"} · pid ${s.pid ?? "?"} · ${s.kind} · ${LO.millis(row.duration_ms)} · status ${s.status_code}` +
      (s.status_message ? `: ${s.status_message}` : "");
    head.appendChild(where);
    const marks = LO.el("div", "marks");
    if (row.entry) mark(marks, "entry", "entry: the request entered the session here");
    if (row.via_baggage_from) mark(marks, "baggage", `joined through baggage from ${row.via_baggage_from}`);
    if (row.remote_parent) mark(marks, "remote", `parent ${row.remote_parent} not recorded here`);
    head.appendChild(marks);
    head.appendChild(LO.el("div", "mono dim small", `trace ${s.trace_id} · span ${s.span_id}` + (s.parent_span_id ? ` · parent ${s.parent_span_id}` : "")));
    pane.appendChild(head);
    for (const exc of d.exceptions) {
      const box = section(pane, "Error");
      box.classList.add("error-box");
      box.appendChild(LO.el("div", "exc", [exc.type, exc.message].filter(Boolean).join(": ")));
      if (exc.traceback) pre(box, exc.traceback, "traceback");
    }
    if (d.llm) renderLLM(pane, d.llm);
    if (d.tool) {
      const box = section(pane, `Tool ${d.tool.name || ""}`);
      box.id = "tool";
      box.appendChild(LO.el("h4", null, "Arguments"));
      pre(box, d.tool.arguments ?? "(not recorded)", "tool-args");
      box.appendChild(LO.el("h4", null, "Result"));
      pre(box, d.tool.result ?? "(not recorded)", "tool-result");
    }
    table(section(pane, "Attributes"), s.attributes, "attributes");
    const events = section(pane, `Events (${(s.events || []).length})`);
    for (const e of s.events || []) {
      events.appendChild(LO.el("div", "event-name", e.name));
      table(events, e.attributes);
    }
    table(section(pane, "Resource"), s.resource);
  }

  async function select(index) {
    const row = rows[index];
    if (!row) return;
    selected = row.span_id;
    for (const node of document.querySelectorAll(".row.selected")) node.classList.remove("selected");
    const node = document.querySelector(`.row[data-index="${index}"]`);
    if (node) node.classList.add("selected");
    history.replaceState(null, "", "#span=" + row.span_id);
    document.body.dataset.detail = "loading";
    try {
      const detail = await LO.getJSON(`${base}/spans/${row.trace_id}/${row.span_id}`);
      if (selected === row.span_id) renderDetail(detail, row);
      LO.showProblem("");
    } catch (err) {
      LO.showProblem(err.message);
    }
    document.body.dataset.detail = row.span_id;
  }

  document.getElementById("waterfall").addEventListener("click", (event) => {
    const row = event.target.closest(".row");
    if (row) select(Number(row.dataset.index));
  });

  async function load(first) {
    try {
      const data = await LO.getJSON(base);
      LO.showProblem("");
      const count = data.waterfall.rows.length;
      if (first || count !== lastCount || data.session.status !== lastStatus) {
        lastCount = count;
        lastStatus = data.session.status;
        renderHead(data.session, data.waterfall);
        renderWaterfall(data.waterfall);
        const wanted = (location.hash.match(/span=([0-9a-f]{16})/) || [])[1] || selected;
        const index = Math.max(0, rows.findIndex((r) => r.span_id === wanted));
        if (rows.length) await select(index);
      }
      document.body.dataset.ready = "1";
      if (!document.body.dataset.readyMs) document.body.dataset.readyMs = String(performance.now());
      if (data.session.status === "open") setTimeout(() => load(false), POLL_MS);
    } catch (err) {
      LO.showProblem(err.message);
      document.body.dataset.ready = "1";
      if (err.status !== 404) setTimeout(() => load(false), POLL_MS);
    }
  }

  load(true);
})();
