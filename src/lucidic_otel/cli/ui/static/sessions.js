/* The sessions page: one server-side page of sessions, searchable, refreshed while
   applications record (a poll every POLL_MS while the tab is visible). */
"use strict";

(function () {
  const POLL_MS = 2000;
  const params = new URLSearchParams(location.search);
  const state = { q: params.get("q") || "", page: Number(params.get("page")) || 1, pages: 1 };
  let lastBody = "";
  let renders = 0;
  let inflight = false;

  const search = document.getElementById("search");
  const tbody = document.querySelector("#sessions tbody");
  search.value = state.q;

  function apiURL() {
    const query = new URLSearchParams();
    if (state.q) query.set("q", state.q);
    if (state.page > 1) query.set("page", String(state.page));
    const text = query.toString();
    return { api: "/api/sessions" + (text ? "?" + text : ""), page: "/" + (text ? "?" + text : "") };
  }

  function cell(row, text, cls) {
    const td = LO.el("td", cls, text);
    row.appendChild(td);
    return td;
  }

  function render(data) {
    document.getElementById("store-path").textContent = data.store;
    state.pages = data.pages;
    const fragment = document.createDocumentFragment();
    for (const s of data.sessions) {
      const tr = LO.el("tr");
      tr.dataset.sessionId = s.session_id;
      const first = cell(tr, null, "name");
      const link = LO.el("a", "session-link", s.name || "(unnamed)");
      link.href = "/sessions/" + encodeURIComponent(s.session_id);
      first.appendChild(link);
      first.appendChild(LO.el("div", "mono dim small", s.session_id));
      cell(tr, LO.time(s.started_ns), "mono");
      cell(tr, LO.duration(s.duration_s), "num");
      const services = cell(tr, null, "services");
      for (const name of s.services) {
        const chip = LO.el("span", "chip", name);
        chip.style.borderColor = LO.serviceColour(name);
        services.appendChild(chip);
      }
      cell(tr, s.span_count, "num");
      cell(tr, s.llm_calls, "num");
      cell(tr, LO.tokens(s.input_tokens, s.output_tokens), "num");
      cell(tr, LO.cost(s.cost), "num");
      const status = cell(tr, null, "status");
      status.appendChild(LO.el("span", "badge status-" + s.status, s.status_text));
      cell(tr, LO.delivery(s), "delivery" + (s.failed ? " bad" : ""));
      fragment.appendChild(tr);
    }
    tbody.replaceChildren(fragment);
    const empty = document.getElementById("empty");
    empty.hidden = data.sessions.length > 0;
    if (!data.store_exists) {
      empty.textContent = `Nothing recorded in ${data.store} yet. Run a program with ` +
        "`opentelemetry-instrument python app.py` and the same LUCIDIC_STORE_PATH: " +
        "its sessions appear here as they are recorded.";
    } else if (data.query) {
      empty.textContent = `No session id, name or service contains "${data.query}".`;
    } else {
      empty.textContent = "No sessions in this store yet; they appear here as they are recorded.";
    }
    const noun = data.total === 1 ? "session" : "sessions";
    document.getElementById("summary").textContent =
      data.query ? `${data.total} ${noun} match` : `${data.total} ${noun}`;
    document.getElementById("page-info").textContent = `page ${data.page} of ${data.pages}`;
    document.getElementById("prev").disabled = data.page <= 1;
    document.getElementById("next").disabled = data.page >= data.pages;
    renders += 1;
    document.body.dataset.renders = String(renders);
    document.body.dataset.ready = "1";
    if (!document.body.dataset.readyMs) document.body.dataset.readyMs = String(performance.now());
  }

  async function load(force) {
    if (inflight) return;
    inflight = true;
    const urls = apiURL();
    try {
      const data = await LO.getJSON(urls.api);
      LO.showProblem("");
      document.getElementById("live").classList.remove("off");
      const body = JSON.stringify(data);
      if (force || body !== lastBody) {
        lastBody = body;
        render(data);
      }
    } catch (err) {
      LO.showProblem(err.message);
      document.getElementById("live").classList.add("off");
      document.body.dataset.ready = "1";
    } finally {
      inflight = false;
    }
  }

  function navigate(page) {
    state.page = Math.max(1, page);
    history.replaceState(null, "", apiURL().page);
    load(true);
  }

  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.q = search.value.trim();
      navigate(1);
    }, 250);
  });
  document.getElementById("prev").addEventListener("click", () => navigate(state.page - 1));
  document.getElementById("next").addEventListener("click", () => navigate(state.page + 1));

  load(true);
  setInterval(() => { if (!document.hidden) load(false); }, POLL_MS);
})();
