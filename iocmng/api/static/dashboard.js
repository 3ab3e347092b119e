// iocmng dashboard: live behaviour on top of the server-rendered pages.
// Hand-written on purpose (no framework, no CDN, no build step): the pages
// must work on an air-gapped control network and stay light.
//
// Live updates come from GET /api/v1/events (Server-Sent Events). It is read
// with fetch() rather than EventSource because EventSource cannot send an
// Authorization header, which IOCMNG_READ_AUTH needs. Each event refetches
// the JSON of the plugin it names; a reload ends the stream: we reconnect and
// refetch everything. PV values on a plugin page are re-read once a second
// while the page is visible (there is no PV gateway; values change without
// events).
"use strict";
(() => {
  const body = document.body;
  document.documentElement.className = "js";
  const page = body.dataset.page, plugin = body.dataset.plugin, auth = body.dataset.auth;
  let coll = body.dataset.coll || "plugins";
  const KEY = "iocmng-token";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
  const state = {generation: +body.dataset.generation, pending: body.dataset.pending ? +body.dataset.pending : null,
    manual: body.dataset.apply === "manual", applying: false, changes: []};

  // -- messages, token ------------------------------------------------------------------------
  function say(text, error) {
    const m = $("#message");
    m.textContent = text;
    m.className = "message" + (error ? " error" : "");
    m.hidden = !text;
  }
  const token = () => sessionStorage.getItem(KEY) || "";
  function showToken() {
    const form = $("#token-form");
    if (auth === "none") return;
    form.hidden = false;
    $("#token-state").textContent = token() ? "token set" : (auth === "read" ? "token needed to read" : "read-only without a token");
    $("#token-clear").hidden = !token();
  }
  const TOKEN_REFUSED = "The API token was refused (401 Unauthorized): nothing was changed. Check the token (IOCMNG_API_TOKEN of the service) and enter it again.";
  const TOKEN_NEEDED = "This action needs the API token: enter it at the top of the page (IOCMNG_API_TOKEN of the service).";

  async function api(method, path, data) {
    const headers = {Accept: "application/json, application/problem+json"};
    if (token()) headers.Authorization = "Bearer " + token();
    const init = {method, headers};
    if (data !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(data); }
    let r;
    try { r = await fetch(path, init); } catch (e) { return {ok: false, status: 0, data: {detail: "the service did not answer: " + e}}; }
    const text = await r.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch (e) { parsed = {detail: text}; }
    if (r.status === 401) {
      const had = !!token();
      sessionStorage.removeItem(KEY);
      showToken();
      say(had ? TOKEN_REFUSED : TOKEN_NEEDED, true);
    }
    return {ok: r.ok, status: r.status, data: parsed};
  }
  const problem = (r) => (r.data && (r.data.detail || r.data.title)) || ("HTTP " + r.status);

  $("#token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const given = $("#token").value.trim();
    if (!given) return;
    const r = await fetch("/ui/auth", {method: "POST", headers: {Authorization: "Bearer " + given}});
    if (r.status === 204) {
      sessionStorage.setItem(KEY, given);
      $("#token").value = "";
      say("Token accepted for this browser tab.");
      showToken();
      if (auth === "read") await loadLocked();
      connect(true);
    } else {
      sessionStorage.removeItem(KEY);
      showToken();
      say(r.status === 401 ? TOKEN_REFUSED : "The token could not be checked: HTTP " + r.status, true);
    }
  });
  $("#token-clear").addEventListener("click", () => { sessionStorage.removeItem(KEY); showToken(); say(""); });

  // -- reload banner ------------------------------------------------------------------------------
  // IOCMNG_APPLY=manual: pending changes wait for the Apply button (POST /api/v1/apply).
  function banner() {
    const pending = state.pending && state.pending > state.generation;
    const held = pending && state.manual && !state.applying;
    $("#banner").hidden = !pending || held;
    $("#apply-banner").hidden = !held;
    if (pending) { $("#pending-gen").textContent = state.pending; $("#apply-gen").textContent = state.pending; }
    $("#apply-list").textContent = state.changes.map((c) => `${c.change} ${c.plugin}`).join(", ");
    $("#generation").textContent = state.generation;
  }
  async function refreshHealth() {
    const r = await api("GET", "/api/v1/health");
    if (!r.ok) return;
    state.generation = r.data.generation;
    state.pending = r.data.pending_generation;
    state.manual = r.data.apply === "manual";
    state.changes = r.data.pending_changes || [];
    if (!state.pending) state.applying = false;
    banner();
  }
  $("#apply-btn").addEventListener("click", async () => {
    const r = await api("POST", "/api/v1/apply");
    if (r.ok) {
      state.applying = r.data.reload_pending; banner();
      say(r.data.message);
    } else if (r.status !== 401) say(problem(r), true);
  });
  const genOf = (p) => (p.state === "pending" && state.pending ? state.pending : state.generation);

  // -- the plugin list ------------------------------------------------------------------------------
  function source(s) {
    if (!s) return "";
    let out = esc(s.url || s.local_path || "?");
    if (s.branch) out += ` <span class="branch">@${esc(s.branch)}</span>`;
    if (s.path) out += ` :${esc(s.path)}`;
    if (s.commit) out += ` <code title="${esc(s.commit)}">${esc(s.commit.slice(0, 8))}</code>`;
    return out;
  }
  function rowHtml(p) {
    const n = esc(p.name);
    return `<td><a href="/ui/plugins/${n}">${n}</a></td><td>${esc(p.kind)}</td><td>${esc(p.mode || "")}</td>` +
      `<td><span class="state s-${esc(p.state)}">${esc(p.state)}</span></td><td>${p.cycle_count ?? 0}</td>` +
      `<td>${p.error_count ?? 0}</td><td class="error">${esc(p.last_error || "")}</td><td class="src">${source(p.source)}</td>` +
      `<td>${genOf(p)}</td>`;
  }
  function putRow(p) {
    const tbody = $("#plugins tbody");
    if (!tbody) return;
    const empty = $("tr.empty", tbody);
    if (empty) empty.remove();
    let tr = tbody.querySelector(`tr[data-name="${CSS.escape(p.name)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.name = p.name;
      const after = [...tbody.children].find((r) => r.dataset.name > p.name);
      tbody.insertBefore(tr, after || null);
    }
    tr.innerHTML = rowHtml(p);
    tr.classList.remove("flash"); void tr.offsetWidth; tr.classList.add("flash");
  }
  function dropRow(name) {
    const tr = $(`#plugins tr[data-name="${CSS.escape(name)}"]`);
    if (tr) tr.remove();
  }
  async function refreshList() {
    const r = await api("GET", "/api/v1/plugins");
    if (!r.ok || !$("#plugins")) return;
    const items = r.data.plugins;  // {plugins: [...], count}
    const names = new Set(items.map((p) => p.name));
    for (const tr of [...document.querySelectorAll("#plugins tbody tr[data-name]")]) if (!names.has(tr.dataset.name)) tr.remove();
    items.forEach(putRow);
  }

  // -- one plugin ----------------------------------------------------------------------------------
  async function refreshPlugin(name) {
    const r = await api("GET", `/api/v1/plugins/${encodeURIComponent(name)}`);
    if (page === "list") {
      if (r.ok) putRow(r.data); else if (r.status === 404) dropRow(name);
      return;
    }
    if (name !== plugin) return;
    if (r.status === 404) { say(`${name} has been removed.`); $("#info").innerHTML = ""; return; }
    if (!r.ok) return;
    const p = r.data;
    coll = p.kind + "s";
    const cell = (v) => v === null || v === undefined ? "–" : typeof v === "boolean" ? (v ? "yes" : "no") : v;
    const set = (key, v) => { const dd = $(`#info dd[data-key="${key}"]`); if (dd) dd.textContent = cell(v); };
    set("kind", p.kind); set("mode", p.mode); set("state", p.state); set("enabled", p.enabled);
    set("cycles", p.cycle_count); set("errors", p.error_count); set("last_error", p.last_error);
    set("pv_prefix", p.pv_prefix); set("generation", genOf(p));
    const src = $('#info dd[data-key="source"]'); if (src) src.innerHTML = source(p.source);
    const btn = $("#enable-btn");
    if (btn) { btn.textContent = p.enabled ? "Disable (ENABLE=0)" : "Enable (ENABLE=1)"; btn.dataset.enabled = p.enabled ? "1" : "0"; }
    await Promise.all([refreshPvs(), refreshLog()]);
  }

  function editor(row, pv) {
    const td = $("td.set", row);
    if (!pv.writable || td.dataset.ready) return;
    td.dataset.ready = "1";
    const form = document.createElement("form");
    form.className = "pv-set";
    if (pv.type === "bool") {
      form.innerHTML = `<select name="value" aria-label="${esc(pv.pv)}"><option value="0">0 ${esc(pv.znam || "")}</option>` +
        `<option value="1">1 ${esc(pv.onam || "")}</option></select> <button>Set</button>`;
    } else {
      const hint = pv.low !== undefined || pv.high !== undefined ? `[${pv.low ?? ""} … ${pv.high ?? ""}]` : "";
      form.innerHTML = `<input name="value" aria-label="${esc(pv.pv)}" placeholder="${esc(hint)}"` +
        `${pv.type === "string" ? ' maxlength="39"' : ""}> <button>Set</button> <small class="field-error" data-for="value"></small>`;
    }
    if (pv.type === "bool") form.elements.value.value = pv.value ? "1" : "0";
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let value = form.elements.value.value;
      if (pv.type === "bool") value = +value;
      else if (pv.type !== "string" && value.trim() !== "" && !isNaN(+value)) value = +value;
      const err = $(".field-error", form);
      const r = await api("PUT", `/api/v1/${coll}/${encodeURIComponent(plugin)}/pvs/${encodeURIComponent(pv.pv)}`, {value});
      if (r.ok) {
        if (err) err.textContent = "";
        say(`${r.data.pv} = ${r.data.value}` + (r.data.clamped ? ` (clamped from ${r.data.requested} by the drive limits)` : ""));
        await refreshPvs();
      } else if (r.status !== 401) {
        if (err) err.textContent = problem(r); else say(problem(r), true);
      }
    });
    td.append(form);
  }
  async function refreshPvs() {
    const r = await api("GET", `/api/v1/plugins/${encodeURIComponent(plugin)}/pvs`);
    if (!r.ok) return;
    for (const pv of r.data.pvs) {
      const row = $(`#pvs tr[data-pv="${CSS.escape(pv.pv)}"]`);
      if (!row) continue;
      const v = pv.text ?? pv.value;
      $("td.value", row).textContent = (v === null ? "–" : v) + (pv.unit ? " " + pv.unit : "");
      editor(row, pv);
    }
  }
  async function refreshLog() {
    const r = await api("GET", `/api/v1/plugins/${encodeURIComponent(plugin)}/logs?limit=50`);
    if (!r.ok) return;
    const line = (x) => `${new Date(x.time * 1000).toTimeString().slice(0, 8)} ${x.level.padEnd(7)} ${x.message}`;
    $("#log").textContent = r.data.records.map(line).join("\n") || "(no log records in this generation)";
  }

  function pluginPage() {
    const enable = $("#enable-btn");
    if (enable) enable.addEventListener("click", async () => {
      const value = enable.dataset.enabled === "1" ? 0 : 1;
      const r = await api("PUT", `/api/v1/tasks/${encodeURIComponent(plugin)}/pvs/ENABLE`, {value});
      if (r.ok) { say(`ENABLE = ${value}`); await refreshPlugin(plugin); } else if (r.status !== 401) say(problem(r), true);
    });
    const trigger = $("#trigger-btn");
    if (trigger) trigger.addEventListener("click", async () => {
      trigger.disabled = true;
      const r = await api("POST", `/api/v1/tasks/${encodeURIComponent(plugin)}/trigger`);
      trigger.disabled = false;
      if (r.ok) say(r.data.success ? `cycle ok in ${r.data.duration_s.toFixed(3)} s (cycles: ${r.data.cycle_count})` : `cycle failed: ${r.data.error}`, !r.data.success);
      else if (r.status !== 401) say(problem(r), true);
    });
    const run = $("#run-form");
    if (run) run.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $("#job-result");
      let parameters;
      try { parameters = JSON.parse(run.elements.parameters.value || "{}"); } catch (e) { say("parameters: not valid JSON: " + e.message, true); return; }
      const data = {parameters};
      if (run.elements.timeout.value) data.timeout = +run.elements.timeout.value;
      out.hidden = false; out.className = "result"; out.textContent = "running…";
      const r = await api("POST", `/api/v1/jobs/${encodeURIComponent(plugin)}/run`, data);
      if (r.ok) {
        out.className = "result " + (r.data.success ? "ok" : "bad");
        out.textContent = `${r.data.success ? "SUCCESS" : "FAILED"} in ${r.data.duration_s.toFixed(3)} s\n` +
          `message: ${r.data.message || ""}\ndata: ${JSON.stringify(r.data.data, null, 2)}`;
      } else { out.className = "result bad"; out.textContent = problem(r); }
    });
    $("#remove-btn").addEventListener("click", async () => {
      if (!confirm(`Remove ${plugin}? Its files and registry entry are deleted; a reload drops its PVs.`)) return;
      const r = await api("DELETE", `/api/v1/${coll}/${encodeURIComponent(plugin)}`);
      if (r.ok) {
        state.pending = r.data.generation; banner();
        say(`${plugin} removed; generation ${r.data.generation} drops its PVs.`);
        for (const b of document.querySelectorAll("main button")) b.disabled = true;
      } else if (r.status !== 401) say(problem(r), true);
    });
  }

  // -- add form --------------------------------------------------------------------------------------
  function addForm() {
    const form = $("#add-form");
    if (!form) return;
    const FIELDS = ["name", "git_url", "local_path", "branch", "path", "pat", "parameters"];
    const mark = (field, text) => {
      const slot = form.querySelector(`.field-error[data-for="${field}"]`) || form.querySelector('.field-error[data-for=""]');
      slot.textContent = text;
      const input = form.elements[field];
      if (input && input.classList) input.classList.add("invalid");
    };
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      for (const s of form.querySelectorAll(".field-error")) s.textContent = "";
      for (const i of form.querySelectorAll(".invalid")) i.classList.remove("invalid");
      const steps = $("#steps"); steps.hidden = true; steps.innerHTML = "";
      const f = form.elements, data = {name: f.name.value.trim()};
      for (const k of ["git_url", "local_path", "branch", "pat"]) if (f[k].value.trim()) data[k] = f[k].value.trim();
      if (f.path.value.trim()) data.path = f.path.value.trim();
      try { data.parameters = JSON.parse(f.parameters.value.trim() || "{}"); } catch (e) { mark("parameters", "not valid JSON: " + e.message); return; }
      say("validating " + data.name + "… (clone, dependencies, import check)");
      const button = $("button[type=submit]", form); button.disabled = true;
      const r = await api("POST", `/api/v1/${f.coll.value}`, data);
      button.disabled = false;
      const report = r.data && r.data.steps;  // the pipeline's steps, on success and refusal alike
      if (report) {
        steps.hidden = false;
        steps.innerHTML = report.map((s) => `<li class="${s.ok ? "ok" : "bad"}"><b>${esc(s.step)}</b> ${esc(s.detail)}</li>`).join("");
      }
      if (r.ok) {
        say(`${data.name} added (validated and committed); generation ${r.data.generation} will serve it.`);
        state.pending = r.data.generation; banner();
        putRow(r.data.plugin);
        f.name.value = "";
        return;
      }
      if (r.status === 401) return;
      say("");
      const d = r.data || {};
      if (d.field) mark(d.field, problem(r));
      else if (d.errors && d.errors.length) for (const e of d.errors) mark(FIELDS.includes(String(e.loc).split(".")[0]) ? String(e.loc).split(".")[0] : "", `${e.loc ? e.loc + ": " : ""}${e.msg}`);
      else mark("", problem(r));
    });
  }

  // -- the event stream -----------------------------------------------------------------------------
  let stream = null, retry = 1000;
  function live(on) { const l = $("#live"); l.className = on ? "on" : ""; l.textContent = on ? "●" : "○"; }
  async function refreshAll() {
    await refreshHealth();
    if (page === "list") await refreshList(); else if (plugin) await refreshPlugin(plugin);
  }
  function handle(type, ev) {
    if (type === "reload") { state.pending = ev.next_generation; state.applying = true; banner(); return; }
    if (type === "shutdown") { say("The service is shutting down.", true); return; }
    if (type === "dropped") { refreshAll(); return; }
    if (type === "added" || type === "removed") { state.pending = ev.generation; banner(); refreshHealth(); }
    if (ev.plugin) refreshPlugin(ev.plugin);
  }
  async function connect(fresh) {
    if (stream) stream.abort();
    const ctrl = stream = new AbortController();
    const headers = token() ? {Authorization: "Bearer " + token()} : {};
    try {
      const r = await fetch("/api/v1/events", {headers, signal: ctrl.signal, cache: "no-store"});
      if (!r.ok) throw new Error("HTTP " + r.status);
      live(true); retry = 1000;
      if (fresh) await refreshAll();
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true}).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let type = "message", data = "";
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) type = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (data) { try { handle(type, JSON.parse(data)); } catch (e) { /* a malformed frame is skipped */ } }
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    if (ctrl !== stream) return;
    live(false);
    // The stream ends at a reload (or shutdown): reconnect, and refetch all once back.
    setTimeout(() => connect(true), retry);
    retry = Math.min(retry * 2, 5000);
  }

  // -- read-protected service: fetch the page itself with the token ------------------------------------
  async function loadLocked() {
    const r = await fetch(location.pathname, {headers: {Authorization: "Bearer " + token()}});
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    if ($("#locked", doc)) return;
    $("main").innerHTML = $("main", doc).innerHTML;
    init();
  }

  function init() {
    if (page === "list") addForm();
    if (page === "plugin" && $("#pvs")) { pluginPage(); refreshPlugin(plugin); }
  }

  showToken();
  banner();
  if (auth === "read" && token()) loadLocked(); else init();
  if (auth !== "read" || token()) connect(false);
  if (page === "plugin") {
    setInterval(() => { if (document.visibilityState === "visible" && $("#pvs") && $("#banner").hidden) refreshPvs(); }, 1000);
  }
})();
