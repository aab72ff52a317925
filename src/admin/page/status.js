// rtmp-guard status page: reads the admin API every 2 s with the
// operator's bearer token and draws what it reads.
//
// Rules this file keeps:
// - Everything the API says is put on the page as text (textContent,
//   setAttribute, SVG built with createElementNS), never as HTML: stream
//   names and reasons are chosen by clients and operators.
// - The token lives in sessionStorage only. A link /#token=... is moved
//   there and taken out of the address bar at once.
// - Every remedy asks for confirmation, then goes through the same API
//   call an operator's tool would make.
"use strict";

(function () {
  const TOKEN_KEY = "rtmp-guard-admin-token";
  const REFRESH_MS = 2000;
  const WINDOW = "15m";
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // ---- the token -------------------------------------------------------

  function takeTokenFromFragment() {
    if (!location.hash.startsWith("#")) return;
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has("token")) return;
    const token = params.get("token");
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  class Unauthorized extends Error {}

  // One call to the admin API. Every call carries the token, if any;
  // every state change says Content-Type: application/json, as the API
  // requires.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    const init = {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (response.status === 401) throw new Unauthorized("the admin API refused the token");
    if (!response.ok) {
      const why = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
      throw new Error(why);
    }
    return { data: data, date: response.headers.get("Date") };
  }

  // ---- small helpers ---------------------------------------------------

  function el(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (className) e.className = className;
    return e;
  }

  function cell(row, text, className) {
    const td = el("td", text === null || text === undefined || text === "" ? "—" : text, className);
    row.appendChild(td);
    return td;
  }

  function button(label, onClick, danger) {
    const b = el("button", label, danger ? "danger" : "");
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }

  function stateClass(state) {
    const known = ["up", "down", "drained", "active", "suspended"];
    return known.includes(state) ? "state-" + state : "";
  }

  function bytes(n) {
    if (typeof n !== "number") return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function bitrate(bps) {
    if (typeof bps !== "number" || !isFinite(bps)) return "—";
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mb/s";
    if (bps >= 1e3) return (bps / 1e3).toFixed(0) + " kb/s";
    return bps.toFixed(0) + " b/s";
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "—";
    seconds = Math.max(0, Math.floor(seconds));
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + s + "s";
    return s + "s";
  }

  // The guard's clock, from the Date header of its last answer, so that
  // durations and time left do not depend on this machine's clock.
  let clockOffsetMs = 0;
  function serverNow() {
    return (Date.now() + clockOffsetMs) / 1000;
  }

  function say(text, failed) {
    const o = $("outcome");
    o.textContent = text;
    o.classList.toggle("failed", !!failed);
  }

  // ---- remedies: a form, a confirmation, one API call --------------------

  // Shows the dialog with `fields` ({name, label, value, placeholder});
  // resolves to their values, or null if cancelled.
  function askForm(title, fields, okLabel) {
    return new Promise((resolve) => {
      const dialog = $("remedy");
      $("remedy-title").textContent = title;
      $("remedy-ok").textContent = okLabel;
      const box = $("remedy-fields");
      box.replaceChildren();
      const inputs = {};
      for (const f of fields) {
        const label = el("label");
        label.appendChild(el("span", f.label));
        const input = document.createElement("input");
        input.name = f.name;
        input.value = f.value || "";
        input.placeholder = f.placeholder || "";
        input.spellcheck = false;
        input.autocomplete = "off";
        if (f.required) input.required = true;
        label.appendChild(input);
        box.appendChild(label);
        inputs[f.name] = input;
      }
      const form = $("remedy-form");
      const finish = (value) => {
        form.removeEventListener("submit", onSubmit);
        $("remedy-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        dialog.close();
        resolve(value);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        const values = {};
        for (const name of Object.keys(inputs)) values[name] = inputs[name].value.trim();
        finish(values);
      };
      const onCancel = (event) => {
        event.preventDefault();
        finish(null);
      };
      form.addEventListener("submit", onSubmit);
      $("remedy-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
    });
  }

  // Asks `question`; if confirmed, makes the call and says how it went.
  async function remedy(question, method, path, body, describe) {
    if (!window.confirm(question)) return;
    try {
      const { data } = await api(method, path, body);
      say(describe(data || {}), false);
    } catch (e) {
      if (e instanceof Unauthorized) return needToken(e.message);
      say("Refused: " + e.message, true);
    }
    refreshSoon();
  }

  function ended(data) {
    return typeof data.sessions_ended === "number"
      ? "; " + data.sessions_ended + " live session(s) ended"
      : "";
  }

  function kick(s) {
    const what = [s.app, s.stream].filter((x) => x).join("/");
    remedy(
      "Kick session " + s.id + " (" + (what || "no stream yet") + " from " + s.client + ")?",
      "DELETE",
      "/api/v1/sessions/" + encodeURIComponent(String(s.id)),
      { reason: "kicked from the status page" },
      () => "Session " + s.id + " kicked."
    );
  }

  function hostPrefix(client) {
    // "192.0.2.7:5000" or "[2001:db8::7]:5000" -> the address as a host prefix.
    const m = /^\[([^\]]+)\]:\d+$/.exec(client);
    if (m) return m[1] + "/128";
    const i = client.lastIndexOf(":");
    return (i > 0 ? client.slice(0, i) : client) + "/32";
  }

  async function ban(cidr) {
    const v = await askForm(
      "Ban a prefix",
      [
        { name: "cidr", label: "Prefix (CIDR)", value: cidr, required: true },
        { name: "duration", label: "Duration (like 1h; empty: until lifted)", value: "1h" },
        { name: "reason", label: "Reason (for the log and the client)", placeholder: "abuse report 1234" },
      ],
      "Ban…"
    );
    if (!v) return;
    const body = { cidr: v.cidr, duration: v.duration || null, reason: v.reason };
    remedy(
      "Ban " + v.cidr + " " + (v.duration ? "for " + v.duration : "until lifted") +
        "? Its live sessions end now.",
      "POST",
      "/api/v1/bans",
      body,
      (d) => "Banned " + (d.banned || v.cidr) + ended(d) + "."
    );
  }

  async function block(app, stream) {
    const v = await askForm(
      "Block streams",
      [
        { name: "app", label: "App", value: app, required: true },
        { name: "stream", label: "Stream name (a glob: film-*)", value: stream, required: true },
        { name: "reason", label: "Reason", placeholder: "dmca" },
      ],
      "Block…"
    );
    if (!v) return;
    remedy(
      "Block " + v.app + "/" + v.stream + "? Its live sessions end now.",
      "POST",
      "/api/v1/blocks",
      { app: v.app, stream: v.stream, reason: v.reason },
      (d) => "Blocked " + (d.blocked || v.app + "/" + v.stream) + ended(d) + "."
    );
  }

  async function suspend(app) {
    const v = await askForm(
      "Suspend app " + app,
      [{ name: "reason", label: "Reason", placeholder: "maintenance" }],
      "Suspend…"
    );
    if (!v) return;
    remedy(
      "Suspend app " + app + "? New connects are refused and its live sessions end now.",
      "POST",
      "/api/v1/apps/" + encodeURIComponent(app) + "/suspend",
      { reason: v.reason, terminate: true },
      (d) => "Suspended " + app + ended(d) + "."
    );
  }

  // ---- drawing ---------------------------------------------------------

  const sort = { key: "id", up: true };
  let lastSessions = [];
  const previousBytes = new Map(); // session id -> {total, at}

  function sessionRows(list, nowMs) {
    const seen = new Set();
    const rows = list.map((s) => {
      const id = String(s.id);
      seen.add(id);
      const up = Number(s.bytes_client_to_upstream) || 0;
      const down = Number(s.bytes_upstream_to_client) || 0;
      const before = previousBytes.get(id);
      let rate = null;
      if (before && nowMs > before.at) {
        rate = ((up + down - before.total) * 8 * 1000) / (nowMs - before.at);
        if (rate < 0) rate = null;
      }
      if (!before || nowMs - before.at >= REFRESH_MS / 2) {
        previousBytes.set(id, { total: up + down, at: nowMs, rate: rate });
      } else {
        rate = before.rate;
      }
      return {
        raw: s,
        id: s.id,
        app: String(s.app || ""),
        stream: s.stream === null || s.stream === undefined ? "" : String(s.stream),
        role: String(s.role || ""),
        client: String(s.client || ""),
        up: up,
        down: down,
        bitrate: rate,
        duration: typeof s.started === "number" ? serverNow() - s.started : null,
      };
    });
    for (const id of previousBytes.keys()) if (!seen.has(id)) previousBytes.delete(id);
    return rows;
  }

  function compare(a, b) {
    const x = a[sort.key];
    const y = b[sort.key];
    let c;
    if (typeof x === "number" || typeof y === "number") {
      c = (x === null || x === undefined ? -1 : x) - (y === null || y === undefined ? -1 : y);
    } else {
      c = String(x).localeCompare(String(y));
    }
    if (c === 0 && sort.key !== "id") c = String(a.id).localeCompare(String(b.id), undefined, { numeric: true });
    return sort.up ? c : -c;
  }

  function drawSessions() {
    const filter = $("filter").value.trim().toLowerCase();
    const rows = lastSessions
      .filter(
        (r) =>
          !filter ||
          r.app.toLowerCase().includes(filter) ||
          r.client.toLowerCase().includes(filter) ||
          r.stream.toLowerCase().includes(filter)
      )
      .sort(compare);
    const tbody = $("sessions").tBodies[0];
    tbody.replaceChildren();
    for (const r of rows) {
      const tr = el("tr");
      tr.setAttribute("data-session-id", String(r.id));
      cell(tr, r.id, "num");
      cell(tr, r.app, "name");
      cell(tr, r.stream, "name stream");
      cell(tr, r.role);
      cell(tr, r.client, "name");
      cell(tr, bytes(r.up), "num");
      cell(tr, bytes(r.down), "num");
      cell(tr, bitrate(r.bitrate), "num");
      cell(tr, duration(r.duration), "num");
      const actions = cell(tr, "", "actions");
      actions.textContent = "";
      const k = button("Kick", () => kick(r.raw), true);
      k.classList.add("kick");
      actions.appendChild(k);
      const b = button("Ban address", () => ban(hostPrefix(r.client)), true);
      b.classList.add("ban");
      actions.appendChild(b);
      if (r.stream) {
        const s = button("Block stream", () => block(r.app, r.stream), true);
        s.classList.add("block");
        actions.appendChild(s);
      }
      tbody.appendChild(tr);
    }
    $("sessions-count").textContent =
      "(" + lastSessions.length + (rows.length !== lastSessions.length ? ", " + rows.length + " shown" : "") + ")";
    $("sessions-empty").hidden = lastSessions.length > 0;
    for (const th of document.querySelectorAll("#sessions th[data-sort]")) {
      th.classList.toggle("sorted-up", th.dataset.sort === sort.key && sort.up);
      th.classList.toggle("sorted-down", th.dataset.sort === sort.key && !sort.up);
    }
  }

  function chart(reason, counts, end, step) {
    const box = el("div", null, "chart");
    box.setAttribute("data-reason", reason);
    const total = counts.reduce((a, b) => a + b, 0);
    const peak = Math.max(1, ...counts);
    const title = el("div", null, "title");
    title.appendChild(el("strong", reason));
    title.appendChild(el("span", String(total), "total"));
    box.appendChild(title);
    box.appendChild(el("div", "peak " + peak + " per " + step + " s", "peak muted"));

    const width = counts.length * 4;
    const height = 40;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", reason + ": " + total + " refusals");
    counts.forEach((n, i) => {
      if (n <= 0) return;
      const h = Math.max(1, (n / peak) * (height - 2));
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("class", "bar");
      bar.setAttribute("x", String(i * 4));
      bar.setAttribute("y", String(height - h));
      bar.setAttribute("width", "3");
      bar.setAttribute("height", String(h));
      const tip = document.createElementNS(SVG, "title");
      const from = new Date((end - (counts.length - i) * step) * 1000);
      tip.textContent = n + " at " + from.toLocaleTimeString();
      bar.appendChild(tip);
      svg.appendChild(bar);
    });
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("class", "base");
    base.setAttribute("x1", "0");
    base.setAttribute("x2", String(width));
    base.setAttribute("y1", String(height - 0.5));
    base.setAttribute("y2", String(height - 0.5));
    svg.appendChild(base);
    box.appendChild(svg);

    const axis = el("div", null, "axis");
    axis.appendChild(el("span", "−" + Math.round((counts.length * step) / 60) + " min"));
    axis.appendChild(el("span", "now"));
    box.appendChild(axis);
    return box;
  }

  function drawRefusals(data) {
    const charts = $("charts");
    charts.replaceChildren();
    const reasons = data && data.reasons && typeof data.reasons === "object" ? data.reasons : {};
    const step = Number(data && data.step_seconds) || 10;
    const end = Number(data && data.end) || serverNow();
    const busy = Object.keys(reasons)
      .map((r) => [r, Array.isArray(reasons[r]) ? reasons[r].map((n) => Number(n) || 0) : []])
      .map(([r, c]) => [r, c, c.reduce((a, b) => a + b, 0)])
      .filter(([, , total]) => total > 0)
      .sort((a, b) => b[2] - a[2] || a[0].localeCompare(b[0]));
    for (const [reason, counts] of busy) charts.appendChild(chart(reason, counts, end, step));
    const total = busy.reduce((a, b) => a + b[2], 0);
    $("refusals-total").textContent = "(" + total + ")";
    $("refusals-empty").hidden = busy.length > 0;
  }

  function drawBans(list) {
    const tbody = $("bans").tBodies[0];
    tbody.replaceChildren();
    for (const b of list) {
      const tr = el("tr");
      tr.setAttribute("data-cidr", String(b.cidr));
      cell(tr, b.cidr, "name");
      cell(tr, b.source);
      cell(tr, b.reason, "name");
      cell(tr, typeof b.until === "number" ? duration(b.until - serverNow()) : "until lifted", "num");
      const actions = cell(tr, "", "actions");
      actions.textContent = "";
      actions.appendChild(
        button("Lift", () =>
          remedy(
            "Lift the ban on " + b.cidr + "?",
            "DELETE",
            "/api/v1/bans/" + encodeURIComponent(String(b.cidr)),
            {},
            () => "Ban on " + b.cidr + " lifted."
          )
        )
      );
      tbody.appendChild(tr);
    }
    $("bans-empty").hidden = list.length > 0;
  }

  function drawBlocks(list) {
    const tbody = $("blocks").tBodies[0];
    tbody.replaceChildren();
    for (const b of list) {
      const tr = el("tr");
      cell(tr, b.app, "name");
      cell(tr, b.stream, "name");
      cell(tr, b.reason, "name");
      const actions = cell(tr, "", "actions");
      actions.textContent = "";
      actions.appendChild(
        button("Lift", () =>
          remedy(
            "Lift the block on " + b.app + "/" + b.stream + "?",
            "DELETE",
            "/api/v1/blocks",
            { app: b.app, stream: b.stream },
            () => "Block on " + b.app + "/" + b.stream + " lifted."
          )
        )
      );
      tbody.appendChild(tr);
    }
    $("blocks-empty").hidden = list.length > 0;
  }

  function drawApps(list) {
    const tbody = $("apps").tBodies[0];
    tbody.replaceChildren();
    for (const a of list) {
      const tr = el("tr");
      cell(tr, a.name, "name");
      const state = cell(tr, a.suspended_reason ? a.state + ": " + a.suspended_reason : a.state);
      const cls = stateClass(a.state);
      if (cls) state.classList.add(cls);
      cell(tr, a.sessions, "num");
      cell(tr, a.publishers, "num");
      cell(tr, a.viewers, "num");
      const actions = cell(tr, "", "actions");
      actions.textContent = "";
      if (a.state === "suspended") {
        actions.appendChild(
          button("Resume", () =>
            remedy(
              "Resume app " + a.name + "?",
              "POST",
              "/api/v1/apps/" + encodeURIComponent(String(a.name)) + "/resume",
              {},
              () => "App " + a.name + " resumed."
            )
          )
        );
      } else {
        actions.appendChild(button("Suspend", () => suspend(String(a.name)), true));
      }
      tbody.appendChild(tr);
    }
  }

  function drawUpstreams(list) {
    const tbody = $("upstreams").tBodies[0];
    tbody.replaceChildren();
    let servers = 0;
    for (const u of list) {
      for (const s of Array.isArray(u.servers) ? u.servers : []) {
        servers++;
        const tr = el("tr");
        cell(tr, u.name, "name");
        cell(tr, s.server, "name");
        const state = cell(tr, s.state);
        const cls = stateClass(s.state);
        if (cls) state.classList.add(cls);
        cell(tr, s.sessions, "num");
        cell(tr, s.last_error, "name");
        const actions = cell(tr, "", "actions");
        actions.textContent = "";
        const drained = s.state === "drained";
        const path =
          "/api/v1/upstreams/" + encodeURIComponent(String(u.name)) + "/servers/" +
          encodeURIComponent(String(s.server)) + (drained ? "/undrain" : "/drain");
        actions.appendChild(
          button(drained ? "Undrain" : "Drain", () =>
            remedy(
              (drained ? "Put " + s.server + " back in rotation?" : "Drain " + s.server + "? It takes no new session; live ones stay."),
              "POST",
              path,
              {},
              () => s.server + (drained ? " undrained." : " drained.")
            )
          )
        );
        tbody.appendChild(tr);
      }
    }
    $("upstreams-empty").hidden = servers > 0;
  }

  // ---- the refresh loop -------------------------------------------------

  let timer = null;
  let running = false;

  function refreshSoon() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 100);
  }

  async function refresh() {
    clearTimeout(timer);
    if (running) return;
    running = true;
    try {
      const get = (path) => api("GET", path);
      const [sessions, refusals, bans, blocks, apps, upstreams] = await Promise.all([
        get("/api/v1/sessions"),
        get("/api/v1/refusals?window=" + WINDOW),
        get("/api/v1/bans"),
        get("/api/v1/blocks"),
        get("/api/v1/apps"),
        get("/api/v1/upstreams"),
      ]);
      const date = Date.parse(sessions.date || "");
      if (!isNaN(date)) clockOffsetMs = date - Date.now();
      showMain();
      const list = sessions.data && Array.isArray(sessions.data.sessions) ? sessions.data.sessions : [];
      lastSessions = sessionRows(list, performance.now());
      drawSessions();
      drawRefusals(refusals.data);
      drawBans(bans.data && Array.isArray(bans.data.bans) ? bans.data.bans : []);
      drawBlocks(blocks.data && Array.isArray(blocks.data.blocks) ? blocks.data.blocks : []);
      drawApps(apps.data && Array.isArray(apps.data.apps) ? apps.data.apps : []);
      drawUpstreams(upstreams.data && Array.isArray(upstreams.data.upstreams) ? upstreams.data.upstreams : []);
      $("problem").textContent = "";
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.setAttribute("data-loaded", "true");
    } catch (e) {
      running = false;
      if (e instanceof Unauthorized) return needToken(token() ? "The token was refused." : "");
      $("problem").textContent = "Cannot read the admin API: " + e.message;
    }
    running = false;
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function showMain() {
    $("login").hidden = true;
    $("main").hidden = false;
    $("forget").hidden = !token();
  }

  function needToken(why) {
    clearTimeout(timer);
    sessionStorage.removeItem(TOKEN_KEY);
    $("main").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-problem").textContent = why || "";
    $("updated").textContent = "";
    $("token").focus();
  }

  function start() {
    takeTokenFromFragment();
    window.addEventListener("hashchange", () => {
      takeTokenFromFragment();
      refreshSoon();
    });
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const t = $("token").value.trim();
      $("token").value = "";
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("login-problem").textContent = "";
      refreshSoon();
    });
    $("forget").addEventListener("click", () => needToken("Token forgotten."));
    $("filter").addEventListener("input", drawSessions);
    for (const th of document.querySelectorAll("#sessions th[data-sort]")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        sort.up = sort.key === key ? !sort.up : true;
        sort.key = key;
        drawSessions();
      });
    }
    $("new-ban").addEventListener("click", () => ban(""));
    $("new-block").addEventListener("click", () => block("", ""));
    refresh();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
