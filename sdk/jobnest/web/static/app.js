// The jobnest web monitor: draws the tree and job pages from the JSON API, kept live by
// server-sent events. No build step: a plain module.

const boot = JSON.parse(document.getElementById("boot").textContent);
const main = document.getElementById("main");
const ICON = {queued: "◷", running: "▶", succeeded: "✔", failed: "✖", cancelled: "⊘"};
const ENDED = ["succeeded", "failed", "cancelled"];
const PAGE = 100;

// -- small helpers -----------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options});
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
  if (!response.ok) throw new Error(body.error ? `${body.field ? body.field + ": " : ""}${body.error}` : response.statusText);
  return body;
}

const post = (path) => api(path, {method: "POST", headers: {"X-CSRF-Token": boot.csrf}});

function size(bytes) {
  if (!bytes) return "";
  for (const [unit, n] of [["Gi", 2 ** 30], ["Mi", 2 ** 20], ["Ki", 2 ** 10]]) if (bytes >= n) return `${+(bytes / n).toFixed(1)}${unit}`;
  return `${bytes}B`;
}

function duration(job) {
  if (!job.started) return "";
  const s = Math.max(0, (job.finished || Date.now() / 1000) - job.started);
  return s < 60 ? `${s.toFixed(1)}s` : s < 3600 ? `${Math.floor(s / 60)}m${Math.round(s % 60)}s` : `${(s / 3600).toFixed(1)}h`;
}

const when = (t) => t ? new Date(t * 1000).toLocaleString() : "";

function flash(text, bad = false) {
  let el = document.getElementById("flash");
  if (!el) main.prepend(el = h("div", {id: "flash"}));
  el.textContent = text;
  el.className = bad ? "bad" : "good";
}

function confirmed(question) {
  return new Promise((resolve) => {
    const dialog = h("dialog", {class: "confirm"}, h("p", {}, question),
      h("div", {}, h("button", {class: "yes", onclick: () => { dialog.close(); resolve(true); }}, "Yes"),
        h("button", {class: "no", onclick: () => { dialog.close(); resolve(false); }}, "No")));
    dialog.addEventListener("close", () => { dialog.remove(); resolve(false); });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// -- a job row, its roll-up and its children ------------------------------------------------------

function counts(row) {
  return h("span", {class: "counts"}, ...Object.entries(row.counts || {}).filter(([, n]) => n)
    .map(([state, n]) => h("span", {class: `count s-${state}`, title: `${n} ${state} below`}, `${ICON[state]}${n}`)));
}

function reuse(row) {
  if (!row.reused) return null;
  return h("a", {class: "reused", href: `/job/${row.origin}`, title: `reused run ${row.run.slice(0, 8)} of job ${row.origin.slice(0, 8)}`},
    `♻ ${row.origin.slice(0, 8)}`);
}

class Rows {
  // The jobs of one tree on screen, by uuid, so an update finds the elements to redraw.
  constructor(top) { this.top = top; this.items = new Map(); }

  line(row) {
    const item = h("li", {class: "job", "data-uuid": row.uuid});
    item.row = row;
    this.items.set(row.uuid, item);
    this.draw(item);
    return item;
  }

  draw(item) {
    const row = item.row;
    const open = item.classList.contains("open");
    const toggle = row.children ? h("button", {class: "toggle", "aria-label": open ? "collapse" : "expand",
      onclick: () => this.toggle(item)}, open ? "▾" : "▸") : h("span", {class: "toggle"});
    const head = h("div", {class: `line s-${row.state}`, title: row.reason || row.state},
      toggle, h("span", {class: "icon"}, ICON[row.state] || "?"),
      h("a", {class: "name", href: `/job/${row.uuid}`}, row.name || "(no name)"),
      h("code", {class: "id"}, row.uuid.slice(0, 8)),
      h("span", {class: "state"}, row.state + (row.exit_code !== null && row.state !== "succeeded" ? ` (${row.exit_code})` : "")),
      h("span", {class: "res"}, row.executor === "driver" ? "driver" : `${row.cpu} cpu${row.memory ? " · " + size(row.memory) : ""}`),
      h("span", {class: "time"}, duration(row)), reuse(row),
      row.children ? h("span", {class: "kids"}, `${row.children} children`) : null, counts(row),
      row.state === "queued" && row.reason ? h("span", {class: "reason"}, row.reason) : null);
    const old = item.querySelector(":scope > .line");
    old ? old.replaceWith(head) : item.prepend(head);
  }

  async toggle(item) {
    if (item.classList.toggle("open")) await this.more(item);
    else { item.querySelector(":scope > ul")?.remove(); item.loaded = 0; }
    this.draw(item);
    live.reopen();
  }

  async more(item) {
    const from = item.loaded || 0;
    const page = await api(`/api/jobs/${item.row.uuid}/children?top=${this.top}&offset=${from}&limit=${PAGE}`);
    let list = item.querySelector(":scope > ul");
    if (!list) item.append(list = h("ul", {class: "children"}));
    list.querySelector(":scope > .more")?.remove();
    for (const row of page.jobs) list.append(this.line(row));
    item.loaded = from + page.jobs.length;
    if (item.loaded < page.total)
      list.append(h("li", {class: "more"}, h("button", {onclick: () => this.more(item)},
        `show ${Math.min(PAGE, page.total - item.loaded)} more of ${page.total - item.loaded} left`)));
  }

  update(row) {
    const item = this.items.get(row.uuid);
    if (!item || !item.isConnected) return false;
    const grew = row.children > item.row.children;
    item.row = row;
    this.draw(item);
    if (grew && item.classList.contains("open") && !item.querySelector(":scope > ul > .more")) this.more(item);
    return true;
  }

  opened() { return [...this.items.values()].filter((i) => i.isConnected && i.classList.contains("open")).map((i) => i.row.uuid); }
}

// -- live updates: one event stream for what is on screen -------------------------------------------

const live = {
  trees: [], source: null, seq: 0, roots: false, onsnapshot: null, onroots: null, onrow: null, timer: null,

  reopen() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), 50);
  },

  open() {
    this.source?.close();
    const tops = this.trees.map((t) => t.top);
    if (!tops.length && !this.roots) return;
    const open = this.trees.flatMap((t) => t.opened());
    const query = new URLSearchParams({tops: tops.join(","), open: open.join(","), last: this.seq, roots: this.roots ? "1" : "0"});
    this.source = new EventSource(`/events?${query}`);
    this.source.addEventListener("update", (e) => {
      this.seq = +e.lastEventId;
      const message = JSON.parse(e.data);
      for (const row of message.rows) {
        for (const tree of this.trees) tree.update(row);
        this.onrow?.(row);
      }
      if (message.roots) this.onroots?.();
      document.body.dataset.seq = this.seq;
    });
    this.source.addEventListener("snapshot", (e) => { this.seq = +e.lastEventId; this.onsnapshot?.(); });
    // EventSource reconnects by itself, sending Last-Event-ID: the server resumes from there.
  },
};

// -- the tree page ------------------------------------------------------------------------------------

const FILTERS = ["state", "name", "owner", "since"];

function filterForm(params, apply) {
  const field = (name, el) => h("label", {}, name, el);
  const state = h("select", {name: "state"}, h("option", {value: ""}, "any"),
    ...Object.keys(ICON).map((s) => h("option", {value: s, selected: params.get("state") === s}, s)));
  const since = h("select", {name: "since"}, ...[["", "any time"], ["1h", "last hour"], ["12h", "last 12 h"], ["7d", "last 7 days"], ["30d", "last 30 days"]]
    .map(([v, t]) => h("option", {value: v, selected: (params.get("since") || "") === v}, t)));
  const form = h("form", {class: "filters", onsubmit: (e) => { e.preventDefault(); apply(new FormData(form)); }},
    field("state", state), field("name", h("input", {name: "name", value: params.get("name") || "", placeholder: "sample-*"})),
    field("owner", h("input", {name: "owner", value: params.get("owner") || "", placeholder: "anyone"})),
    field("since", since), h("button", {type: "submit"}, "filter"));
  for (const el of [state, since]) el.addEventListener("change", () => apply(new FormData(form)));
  return form;
}

async function treePage() {
  const params = new URLSearchParams(location.search);
  const list = h("ul", {class: "tree", id: "tree"});
  const older = h("div", {class: "older"});
  const apply = (data) => {
    const next = new URLSearchParams();
    for (const name of FILTERS) if (data.get(name)) next.set(name, data.get(name));
    history.replaceState(null, "", next.toString() ? `/?${next}` : "/");
    treePage();
  };
  main.replaceChildren(filterForm(params, apply), list, older);
  const filtered = FILTERS.some((f) => params.get(f));
  let shown = 0;
  const filters = () => new URLSearchParams([...params].filter(([k]) => FILTERS.includes(k)));
  const load = async () => {
    const query = filters();
    query.set("offset", shown);
    const page = await api(`/api/jobs?${query}`);
    if (!shown) live.seq = page.seq;
    for (const row of page.jobs) {
      const rows = new Rows(row.uuid);
      live.trees.push(rows);
      list.append(rows.line(row));
    }
    shown += page.jobs.length;
    older.replaceChildren(page.more ? h("button", {onclick: load}, "older jobs") : "");
    if (!shown) list.append(h("li", {class: "empty"}, filtered ? "no job matches" : "no jobs yet"));
    live.reopen();
  };
  live.trees = [];
  live.roots = !filtered;
  live.onsnapshot = () => treePage();
  live.onroots = async () => {  // new root jobs: put them on top, leaving what is open as it is
    const have = new Set(live.trees.map((t) => t.top));
    const fresh = (await api(`/api/jobs?${filters()}`)).jobs.filter((row) => !have.has(row.uuid));
    list.querySelector(":scope > .empty")?.remove();
    for (const row of fresh.reverse()) {
      const rows = new Rows(row.uuid);
      live.trees.push(rows);
      list.prepend(rows.line(row));
    }
    shown += fresh.length;
    if (fresh.length) live.reopen();
  };
  try { await load(); } catch (e) { flash(e.message, true); }
}

// -- the job page -------------------------------------------------------------------------------------

function table(pairs) {
  return h("table", {class: "facts"}, ...pairs.filter(([, v]) => v !== "" && v !== null && v !== undefined)
    .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
}

function dataLink(ref) {
  if (ref.startsWith("job:")) return h("a", {href: `/job/${ref.slice(4)}`}, `output of job ${ref.slice(4, 12)}`);
  const digest = ref.replace(/^data:/, "");
  return h("span", {}, h("button", {class: "files", onclick: (e) => showFiles(digest, e.target.parentElement)}, `files of ${digest.slice(0, 12)}`));
}

async function showFiles(digest, where) {
  try {
    const m = await api(`/api/data/${digest}`);
    where.replaceChildren(h("ul", {class: "files"}, ...m.entries.map((e) => h("li", {},
      e.link ? `${e.path} → ${e.link}` : h("a", {href: `/data/${digest}/${e.path.split("/").map(encodeURIComponent).join("/")}`, download: ""}, e.path),
      e.link ? "" : h("span", {class: "size"}, ` ${size(e.size) || "0B"}`)))));
  } catch (e) { where.append(h("span", {class: "bad"}, ` ${e.message}`)); }
}

function whyPanel(why) {
  if (!why || why.error) return h("section", {class: "why", id: "why"}, h("h2", {}, "Why"), h("p", {}, why?.error || ""));
  return h("section", {class: "why", id: "why"}, h("h2", {}, why.reused ? "Why: reused" : "Why: ran"),
    h("p", {class: "explanation"}, why.explanation),
    h("table", {class: "parts"}, h("tr", {}, h("th", {}, "part"), h("th", {}, "this run"), h("th", {}, "compared run")),
      ...Object.entries(why.parts).map(([name, p]) => h("tr", {class: why.differing.includes(name) ? "differs" : ""},
        h("td", {}, name), h("td", {}, h("code", {}, p.hash.slice(0, 12))), h("td", {}, h("code", {}, (p.compared || "").slice(0, 12)))))));
}

class Log {
  // One stream of a job's log: the tail, earlier pages on demand, and what follows, live.
  constructor(uuid) {
    this.uuid = uuid; this.stream = "stdout"; this.source = null;
    this.text = h("pre", {class: "log", id: "log"});
    this.earlier = h("button", {class: "earlier", onclick: () => this.page()}, "earlier");
    this.tabs = h("div", {class: "tabs"}, ...["stdout", "stderr"].map((s) =>
      h("button", {class: s === this.stream ? "on" : "", "data-stream": s, onclick: () => this.show(s)}, s)));
    this.el = h("section", {class: "logs"}, h("h2", {}, "Logs"), this.tabs, this.earlier, this.text);
  }

  async show(stream, running) {
    this.stream = stream;
    for (const b of this.tabs.children) b.className = b.dataset.stream === stream ? "on" : "";
    const tail = await api(`/api/jobs/${this.uuid}/logs?stream=${stream}`);
    this.start = tail.offset; this.end = tail.end;
    this.text.textContent = tail.text;
    this.earlier.hidden = this.start === 0;
    this.follow(running ?? this.running);
  }

  async page() {
    const from = Math.max(0, this.start - 65536);
    const page = await api(`/api/jobs/${this.uuid}/logs?stream=${this.stream}&offset=${from}&limit=${this.start - from}`);
    this.text.prepend(page.text);
    this.start = from;
    this.earlier.hidden = from === 0;
  }

  follow(running) {
    this.running = running;
    this.source?.close();
    if (!running) return;
    this.source = new EventSource(`/api/jobs/${this.uuid}/logs/follow?stream=${this.stream}&offset=${this.end}`);
    this.source.addEventListener("log", (e) => {
      const chunk = JSON.parse(e.data);
      if (chunk.offset < this.end) return;
      this.text.append(chunk.text);
      this.end = +e.lastEventId;  // bytes, as the offsets count
      const cap = 1 << 20;  // characters kept on screen; older ones come back with "earlier"
      if (this.text.textContent.length > cap) {
        const cut = this.text.textContent.length - cap;
        this.text.textContent = this.text.textContent.slice(cut);
        this.start += cut; this.earlier.hidden = false;
      }
      this.text.scrollTop = this.text.scrollHeight;
    });
    this.source.addEventListener("end", () => this.source.close());
  }
}

function actions(job) {
  const act = async (question, path, done) => {
    if (!(await confirmed(question))) return;
    try { done(await post(path)); } catch (e) { flash(e.message, true); }
  };
  const below = Object.values(job.counts || {}).reduce((a, b) => a + b, 0);
  return h("div", {class: "actions"},
    !ENDED.includes(job.state) ? h("button", {class: "cancel", onclick: () => act(
      `Cancel ${job.name || job.uuid.slice(0, 8)}${below ? ` and the ${below} jobs below it` : ""}?`,
      `/api/jobs/${job.uuid}/cancel`, (r) => flash(`cancelled ${r.cancelled.length} job${r.cancelled.length === 1 ? "" : "s"}`))}, "Cancel") : null,
    ["failed", "cancelled"].includes(job.state) && !job.spec?.driver ? h("button", {class: "retry", onclick: () => act(
      `Run ${job.name || "this job"} again, as a new job of the same spec?`, `/api/jobs/${job.uuid}/retry`,
      (r) => { flash(`retried as job ${r.uuid.slice(0, 8)}`); location.href = `/job/${r.uuid}`; })}, "Retry") : null,
    job.state === "succeeded" && job.executor !== "driver" ? h("button", {class: "invalidate", onclick: () => act(
      `Mark run ${job.run.slice(0, 8)} bad, so no job reuses it again?`, `/api/runs/${job.run}/invalidate`,
      () => flash(`run ${job.run.slice(0, 8)} invalidated: it is not reused again`))}, "Invalidate run") : null);
}

let shownLog = null;

async function jobPage() {
  let data;
  try { data = await api(`/api/jobs/${boot.uuid}`); } catch (e) { main.replaceChildren(h("p", {class: "bad", id: "missing"}, e.message)); return; }
  const job = data.job, spec = job.spec || {};
  live.seq = data.seq;
  const head = h("div", {class: "head"});
  const drawHead = (row) => {
    Object.assign(job, row);
    head.replaceChildren(h("h1", {class: `s-${job.state}`}, h("span", {class: "icon"}, ICON[job.state]), ` ${job.name || "(no name)"} `,
      h("code", {}, job.uuid)), h("p", {class: "status"}, h("span", {class: "state", id: "state"}, job.state),
      job.reason ? ` · ${job.reason}` : job.exit_code !== null ? ` · exit code ${job.exit_code}` : ""), actions(job));
  };
  drawHead({});
  const inputs = Object.entries(spec.inputs || {});
  const children = new Rows(job.uuid);
  const childList = h("ul", {class: "tree"});
  const picture = h("div", {class: "graph-box"});
  shownLog?.follow(false);  // a page drawn again follows its log anew
  const log = shownLog = new Log(job.uuid);
  main.replaceChildren(...[head,
    h("section", {class: "spec"}, h("h2", {}, "Spec"), table([
      ["command", h("code", {}, (job.argv || []).join(" "))], ["parent", job.parent ? h("a", {href: `/job/${job.parent}`}, job.parent) : ""],
      ["owner", job.owner], ["executor", job.executor], ["image", spec.image], ["node", job.node],
      ["cpu", `${job.cpu}${job.cpu_enforced ? " (enforced)" : ""}`], ["memory", size(job.memory)], ["cwd", spec.cwd],
      ["env", Object.entries(spec.env || {}).map(([k, v]) => `${k}=${v}`).join(" ")], ["when", spec.when],
      ["retries", spec.retries], ["created", when(job.created)], ["started", when(job.started)], ["finished", when(job.finished)],
      ["run", job.run], ["reused from", job.reused ? h("a", {href: `/job/${job.origin}`}, job.origin) : ""]])),
    job.attempts.length ? h("section", {}, h("h2", {}, "Attempts"), h("table", {class: "attempts"},
      h("tr", {}, ...["attempt", "exit", "reason", "node", "started", "finished"].map((c) => h("th", {}, c))),
      ...job.attempts.map((a) => h("tr", {}, h("td", {}, a.attempt), h("td", {}, a.exit_code ?? ""), h("td", {}, a.reason),
        h("td", {}, a.node), h("td", {}, when(a.started_at)), h("td", {}, when(a.finished_at)))))) : null,
    whyPanel(data.why),
    h("section", {class: "data"}, h("h2", {}, "Inputs and output"),
      inputs.length ? h("ul", {}, ...inputs.map(([name, ref]) => h("li", {}, `${name}: `, dataLink(ref)))) : h("p", {}, "no inputs"),
      job.output ? h("p", {id: "output"}, "output: ", dataLink(`data:${job.output}`)) : h("p", {}, "no output yet")),
    log.el,
    job.children ? h("section", {class: "children"}, h("h2", {}, `Children (${job.children})`), picture, childList) : null,
  ].filter(Boolean));
  if (job.children) {
    const top = children.line({...job});
    childList.append(top);
    await children.toggle(top);
    drawPicture(job.uuid, picture);
  }
  live.trees = [children];
  live.roots = false;
  live.onrow = (row) => {
    if (row.uuid === job.uuid) {
      const wasRunning = !ENDED.includes(job.state);
      if (!job.children && row.children) return jobPage();  // its first children: draw their section
      if (row.children !== job.children) drawPicture(job.uuid, picture);
      drawHead(row);
      if (wasRunning && ENDED.includes(row.state)) setTimeout(() => log.follow(false), 1000);
    }
    picture.querySelector(`[data-uuid="${row.uuid}"]`)?.setAttribute("class", `node s-${row.state}`);
  };
  live.onsnapshot = () => jobPage();
  live.reopen();
  if (job.executor === "driver") log.el.replaceChildren(h("h2", {}, "Logs"), h("p", {class: "note"}, "A driver's output goes to its own terminal."));
  else await log.show("stdout", !ENDED.includes(job.state));
}

async function drawPicture(uuid, where) {
  const response = await fetch(`/api/jobs/${uuid}/graph`, {credentials: "same-origin"});
  if (response.headers.get("content-type")?.includes("json")) {
    const body = await response.json();
    where.replaceChildren(h("p", {class: "note"}, body.too_many ? `${body.too_many} children: too many for a picture (at most ${body.limit}); the list is below.` : body.error));
  } else {
    where.innerHTML = await response.text();  // made by the monitor, names escaped
  }
}

// -- the login page ------------------------------------------------------------------------------------

function loginPage() {
  main.replaceChildren(h("form", {class: "login", method: "post", action: "/login"},
    h("h1", {}, "Log in"), h("p", {}, "with your jobnest token (`jobnest token create NAME` makes one)."),
    boot.error ? h("p", {class: "bad", id: "error"}, boot.error) : null,
    h("input", {type: "password", name: "token", autocomplete: "current-password", placeholder: "token", required: true}),
    h("input", {type: "hidden", name: "next", value: boot.next || "/"}), h("button", {type: "submit"}, "Log in")));
}

const nav = document.getElementById("nav");
if (boot.login && boot.page !== "login") nav.append(h("button", {class: "logout", onclick: async () => { await post("/logout"); location.href = "/login"; }}, "log out"));
({tree: treePage, job: jobPage, login: loginPage})[boot.page]();
