// parkguide dashboard: plain JS, no build step. Data from /api/v1, live updates by
// server-sent events (/api/v1/stream); the page reloads its snapshot on every (re)connect.
"use strict";

const T = {
  dashboard: ["管理看板", "dashboard"], connecting: ["连接中", "connecting"], live: ["实时", "live"],
  live_broker_lost: ["实时 · 消息代理断开", "live · broker lost"],
  live_gateway_offline: ["实时 · 网关离线", "live · gateway offline"],
  live_blind_title: ["本页已连接，但它显示的数据来源已断开：计数为未知（--）", "this page is connected, but the data it shows is not: counts are unknown (--)"],
  reconnecting: ["重新连接", "reconnecting"], logout: ["退出", "log out"], login: ["登录", "Log in"],
  login_btn: ["登录", "Log in"], user: ["用户名", "User"], password: ["密码", "Password"],
  login_hint: ["空位数和引导屏公开；登录后可看地图、历史和操作。",
    "Free counts and signs are public; log in for the map, history and controls."],
  alerts: ["告警", "Alerts"], zones: ["区域", "Zones"], zone: ["区域", "Zone"], map: ["地图", "Map"], signs: ["引导屏", "Signs"],
  health: ["设备状态", "Health"], history: ["占用率", "Occupancy"], events: ["事件", "Events"],
  free: ["空闲", "free"], occupied: ["占用", "occupied"], unknown: ["未知", "unknown"], closed: ["关闭", "closed"],
  reason: ["原因", "Reason"], close_space: ["关闭车位", "Close space"], open_space: ["开放车位", "Open space"],
  agent: ["代理", "Agent"], status: ["状态", "Status"], nodes: ["节点", "Nodes"], last_seen: ["最后上报", "Last seen"],
  last_day: ["最近24小时", "last 24 h"], last_week: ["最近7天", "last 7 days"], filter: ["筛选", "Filter"],
  from: ["从", "from"], to: ["到", "to"], export_csv: ["导出 CSV", "Export CSV"], time: ["时间", "Time"],
  space: ["车位", "Space"], change: ["变化", "Change"], source: ["来源", "Source"], older: ["更早", "Older"],
  space_ph: ["车位，如 A-001", "space, e.g. A-001"], of: ["共", "of"], online: ["在线", "online"],
  offline: ["离线", "offline"], no_alerts: ["没有告警", "no alerts"], ack: ["确认", "Acknowledge"],
  cleared_24h: ["最近24小时已恢复", "Cleared in the last 24 h"], cleared_at: ["恢复于", "cleared"],
  episodes: ["第 {n} 次(每次在上次恢复后24小时内再现)", "episode {n} in a row (each back within 24 h)"],
  acked_by: ["已确认：", "acknowledged by "], held: ["已预留", "held for an arriving car"],
  since: ["自", "since"], wrong_login: ["用户名或密码错误", "wrong user name or password"],
  cookie_refused_http: ["已登录，但浏览器拒收了会话 Cookie：设置了 PARKGUIDE_COOKIE_SECURE=true 时，须通过 HTTPS 打开管理看板。",
    "Logged in, but the browser refused the session cookie: with PARKGUIDE_COOKIE_SECURE=true the dashboard must be opened over HTTPS."],
  cookie_refused: ["已登录，但浏览器没有保存会话 Cookie：请允许本站使用 Cookie 后再登录。",
    "Logged in, but the browser did not keep the session cookie: allow cookies for this site and log in again."],
  too_many: ["尝试太多，请稍后再试", "too many attempts, try again later"],
  need_login: ["需要登录", "login required"], need_manager: ["需要管理员权限", "needs the manager role"],
  closed_by: ["关闭人", "closed by"], done_close: ["已关闭", "closed"], done_open: ["已开放", "opened"],
  was_closed_by: ["此前由 {by} 关闭", "it was closed by {by}"],
  // two managers at once: the page sends the closer it shows; another's closure is asked about
  earlier_closed_by: ["更早由 {list} 关闭", "before that closed by {list}"],
  closed_by_other: ["{id} 已由 {by} 关闭", "{id} is closed by {by}"], site_file: ["场地文件", "the site file"],
  not_closed_now: ["{id} 现在未关闭", "{id} is not closed now"],
  ask_close_anyway: ["仍用您的原因关闭？", "close anyway with your reason?"], ask_open_anyway: ["仍要开放？", "open anyway?"],
  ask_reason: ["请先填写您的原因，再仍然关闭", "type your reason, then close anyway"],
  open_already: ["{id} 已开放，无需操作", "{id} is already open: nothing to do"],
  close_anyway: ["仍然关闭", "Close anyway"], open_anyway: ["仍然开放", "Open anyway"],
  reason_replaces: ["您的原因取代了 {by} 的原因", "your reason replaces {by}'s"],
  opened_zone_was: ["此前整区由 {by} 关闭", "it was closed by {by}"],
  // a whole zone closed (cleaning, snow, an event): one action for all its spaces
  close_zone: ["关闭区域", "Close zone"], open_zone: ["开放区域", "Open zone"],
  zone_actions: ["关闭/开放…", "Close/open…"], zone_closed_by: ["整区由 {by} 关闭", "zone closed by {by}"],
  zone_panel_for: ["区域：{zone}", "Zone: {zone}"],
  zone_panel_hint: ["关闭会关闭本区所有未关闭的车位；开放只开放随本区关闭的车位，单独关闭的车位保持关闭。",
    "Closing closes every space of the zone not already closed; opening opens only the spaces the zone's closure closed: spaces closed on their own stay closed."],
  done_zone_close: ["已关闭 {n} 个车位", "{n} spaces closed"], done_zone_open: ["已开放 {n} 个车位", "{n} spaces opened"],
  new_reason: ["已记录新原因", "the new reason is recorded"],
  left_closed: ["仍关闭（单独关闭）：{list}", "still closed (closed on their own): {list}"],
  cars_on_their_way: ["已有车辆被分配到其中 {n} 个车位，可能正在驶来", "cars were sent to {n} of them and may be on their way"],
  was_closed_with_zone: ["此前随{zone}由 {by} 关闭", "it was closed with {zone} by {by}"],
  with_zone: ["随{zone}", "with {zone}"], cancel: ["取消", "Cancel"],
  zone_shut: ["关闭", "CLOSED"],
  car_on_its_way: ["已有一辆车被分配到此车位，可能正在驶来", "a car was sent to it and may be on its way"], sent: ["已发送", "sent"],
  no_data: ["无数据", "no data"], raw_readings: ["检测器：原始读数和错误计数", "Detectors: raw readings and error counters"],
  detector: ["检测器", "Detector"], raw: ["原始值", "Raw"], battery: ["电量", "Battery"], node_errors: ["节点错误", "Node errors"], unreachable: ["无法连接服务器", "server unreachable"], expired: ["已过期", "expired"], failed: ["失败", "failed"],
  not_live_since: ["非实时：自 {t} 起未更新", "not live since {t}"],
  // the live stream refused at a cap (429: this login's streams, 503: the server's): why, and when
  // the page tries again
  live_full: ["连接已满", "too many open"], live_busy: ["服务器繁忙", "server busy"],
  // ({s}: seconds left, counting down)
  streams_full: ["此登录打开的实时连接已达上限：请关闭一个看板标签页或屏幕；{s} 秒后再试",
    "this login has the most live connections it may have open: close a dashboard tab or screen; trying again in {s} s"],
  streams_busy: ["服务器的实时连接已满；{s} 秒后再试", "the server has too many live connections open; trying again in {s} s"],
  live_again: ["已恢复实时", "live again"], free_now: ["空位：{list}", "free spaces: {list}"],
  // the map for the keyboard and screen readers, and a way in without it
  map_of: ["地图：{level}", "map: {level}"], show_space: ["查看", "Show"],
  no_space: ["本场地没有车位“{id}”", "no space \"{id}\" on this site"],
  map_hint: ["地图上：用 Tab 键进入一层，方向键在车位间移动，回车打开。",
    "On the map: Tab to a level, the arrow keys move between spaces, Enter opens one."],
  chart_label: ["占用率，{range}：{list}", "occupancy, {range}: {list}"],
  // the gateway's own downtime (history: outages): nothing was recorded, so nothing is known
  gateway_down: ["网关停机，未记录：{from} – {to}", "gateway down, nothing recorded: {from} – {to}"],
  gateway_down_n: ["其间网关停机 {n} 次", "the gateway was down {n} time(s) in it"],
  // an alert's acknowledgement: who, when, and what they wrote
  note_ph: ["备注（可选），如：已通知维修工", "note (optional), e.g. technician called"],
  note: ["备注：", "note: "],
  ack_taken: ["{by} 已于 {t} 先确认，您的确认未保存", "{by} acknowledged it first, at {t}: yours was not saved"],
  // the server's answers, by HTTP status; its own words (English) follow in brackets
  err_400: ["请求有误", "bad request"], err_404: ["找不到", "not found"],
  err_409: ["与当前状态冲突", "conflicts with the current state"],
  err_413: ["提交的内容太大", "the request is too large"], err_422: ["输入有误", "invalid input"],
  err_500: ["服务器出错", "server error"], err_503: ["服务繁忙，请稍后再试", "the service is busy, try again shortly"],
  // roles, space kinds and statuses as the site and agents name them (ids): shown translated
  role_viewer: ["查看员", "viewer"], role_manager: ["管理员", "manager"], role_technician: ["技术员", "technician"],
  kind_resident: ["住户", "resident"], kind_visitor: ["访客", "visitor"], kind_ev: ["新能源充电", "EV charging"],
  kind_accessible: ["无障碍", "accessible"], kind_shared: ["共享", "shared"],
  st_ok: ["正常", "ok"], st_degraded: ["部分故障", "degraded"], st_blind: ["无法检测", "blind"],
  st_offline: ["离线", "offline"], st_unknown: ["未知", "unknown"], st_stuck: ["卡住", "stuck"],
  st_flapping: ["抖动", "flapping"], st_dead: ["无应答", "dead"], st_fault: ["故障", "fault"],
  st_slow: ["通信不稳定", "unreliable"], st_error: ["出错", "error"],
  st_never_seen: ["从未连接", "never seen"], st_boot_conflict: ["报告被拒(启动冲突)", "reports refused (boot conflict)"],
};
const STATES = ["free", "occupied", "unknown", "closed"];
const ARROWS = { left: "←", right: "→", up: "↑", down: "↓", "up-left": "↖", "up-right": "↗",
  "down-left": "↙", "down-right": "↘", none: "" };
const ZONE_COLOURS = ["#1b5fb8", "#d64541", "#1f9d55", "#b5651d", "#7b3fb8", "#0f8a8a", "#555"];
// each zone's line also has its own dashes: told apart without colour (the legend shows them)
const ZONE_DASHES = ["", "8 4", "2 3", "10 3 2 3", "5 2", "1 4", "12 3 2 3 2 3"];

const S = { lang: localStorage.getItem("lang") || (navigator.language.startsWith("zh") ? "zh" : "en"),
  me: null, publicRead: true, site: null, alertMsgs: new Map(), zones: [], displays: [], spaces: new Map(), selected: null,
  range: 86400, eventsBefore: null, es: null, timers: {}, tz: undefined,
  downSince: null, stale: false, // stream lost at (UNIX s); stale: what is shown is no longer live
  refused: null }; // the stream refused at a cap: { status: 429 or 503, retryAt: ms }
// A reconnect normally takes about a second (retry: 1000); down longer than this, the page stops
// presenting its last snapshot as live.
const STALE_AFTER_MS = 5000;
// The map's polygon of each space, by id, kept by drawMap: a space's polygon is looked up
// without a search of the page (at 20,000 spaces, a search per space froze the page for seconds).
const polygons = new Map();

const $ = (sel) => document.querySelector(sel);
const t = (key) => (T[key] ? T[key][S.lang === "zh" ? 0 : 1] : key);
const L = (obj) => (obj ? obj[S.lang] || obj.en : "");
// an id the site or an agent gives (a kind, a role, a status) in the page's language; an id
// the table does not know is shown as it is
const tr = (prefix, id) => (T[prefix + id] ? t(prefix + id) : id);
const paren = (x) => (S.lang === "zh" ? `（${x}）` : ` (${x})`);
const listSep = () => (S.lang === "zh" ? "，" : ", ");
const zoneName = (id) => {
  const z = S.site && S.site.zones.find((x) => x.id === id);
  return z ? L(z.name) : id;
};
// an event's or a space's source: a bus or camera id, or "manager" for a manager's action
const sourceText = (source, agent) =>
  source === "manager" ? `${t("role_manager")} ${agent || ""}`.trim() : [source, agent].filter(Boolean).join(" / ");
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
// Times are the site's wall clock (its policy windows and its people), wherever the browser is.
const locale = () => (S.lang === "zh" ? "zh-CN" : "en-GB");
const fmtTime = (ts, opts = {}) => (ts ? new Date(ts * 1000).toLocaleString(locale(), { timeZone: S.tz, ...opts }) : "—");
// UNIX seconds of midnight starting the day "YYYY-MM-DD" at the site (DST-safe: the offset is
// read at the instant itself, then once more in case midnight falls on the other side).
function siteMidnight(day) {
  const [y, m, d] = day.split("-").map(Number);
  const wall = Date.UTC(y, m - 1, d);
  const offset = (t) => {
    const p = Object.fromEntries(new Intl.DateTimeFormat("en-US", { timeZone: S.tz, hourCycle: "h23",
      year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" })
      .formatToParts(new Date(t)).map((x) => [x.type, Number(x.value)]));
    return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) - t;
  };
  let t = wall - offset(wall);
  t = wall - offset(t);
  return t / 1000;
}
const nextDay = (day) => new Date(Date.parse(day + "T00:00:00Z") + 86400000).toISOString().slice(0, 10);
const later = (name, fn, ms) => { clearTimeout(S.timers[name]); S.timers[name] = setTimeout(fn, ms); };
// At most once per `ms`, and within `ms` of any call, however often calls keep coming (unlike
// `later`, which a steady stream of calls would put off for ever).
const throttle = (name, fn, ms) => {
  if (S.timers[name] != null) return;
  S.timers[name] = setTimeout(() => { S.timers[name] = null; fn(); }, ms);
};
// Live events change single signs and zone cards; they are drawn once per frame, however many
// events came in it (several for one sign: drawn once, as the last one left it).
const dirty = { signs: new Set(), zones: new Set(), frame: 0 };
function redrawSoon() {
  if (!dirty.frame) dirty.frame = requestAnimationFrame(redrawDirty);
}
function redrawDirty() {
  dirty.frame = 0;
  const now = performance.now();
  for (const id of dirty.signs) {
    const d = S.displays.find((x) => x.display === id);
    const old = document.querySelector(`#signs .sign[data-display="${CSS.escape(id)}"]`);
    if (d && old) old.replaceWith(signEl(d, now));
    else if (d) { dirty.signs.clear(); renderSigns(); break; } // not drawn yet: draw them all
  }
  dirty.signs.clear();
  for (const id of dirty.zones) {
    const z = S.zones.find((x) => x.zone === id);
    const old = document.querySelector(`#zones .zone[data-zone="${CSS.escape(id)}"]`);
    if (z && old) old.replaceWith(zoneCard(z));
    else if (z) { dirty.zones.clear(); renderZones(); break; }
  }
  dirty.zones.clear();
}

const PAGE_USER = "X-Parkguide-User"; // the user this page shows, sent with its changes

async function api(path, opts = {}) {
  let r;
  const headers = { "Content-Type": "application/json" };
  // one browser shares its login between tabs: a tab still showing alice must not act as bob,
  // who logged in in another (the server refuses it: 409)
  if (opts.method && opts.method !== "GET" && S.me) headers[PAGE_USER] = S.me.name;
  try {
    r = await fetch(path, { headers, ...opts });
  } catch {
    return { ok: false, status: 0, body: null }; // server unreachable: the stream reconnects
  }
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  // refused for want of a login while we think we have one: the session has ended (expired,
  // logged out in another tab, user removed); ask who we are now, which clears the private parts
  if (r.status === 401 && S.me) later("session", loadSession, 0);
  if (r.status === 409 && headers[PAGE_USER] && body && typeof body.detail === "string"
      && body.detail.startsWith("this browser is now logged in as")) later("session", loadSession, 0);
  return { ok: r.ok, status: r.status, body, date: r.headers.get("Date") };
}

// What went wrong, in the page's language: a sentence for the HTTP status, then the server's
// own detail (English, naming what it refused) in brackets.
const STATUS_TEXT = { 400: "err_400", 404: "err_404", 409: "err_409", 413: "err_413", 422: "err_422", 503: "err_503" };
function errorText(res) {
  if (res.status === 401) return t("need_login");
  if (res.status === 403) return t("need_manager");
  if (res.status === 429) return t("too_many");
  if (res.status === 0) return t("unreachable");
  const d = res.body && res.body.detail;
  const detail = Array.isArray(d) ? d.map((e) => (e && e.msg) || "").filter(Boolean).join("; ") : typeof d === "string" ? d : "";
  const key = STATUS_TEXT[res.status] || (res.status >= 500 ? "err_500" : null);
  const head = key ? t(key) : `${t("failed")} (${res.status})`;
  return detail ? head + paren(detail) : head;
}

// ---- language ------------------------------------------------------------------------------
function applyLang() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  $("#lang").textContent = S.lang === "zh" ? "English" : "中文";
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
  if (S.siteName) $("#site-name").textContent = L(S.siteName);
  renderZones(); renderSigns(); renderLevelTitles(); renderLive(S.es && S.es.readyState === 1); renderStale(); renderWho();
  for (const id of S.spaces.keys()) paintSpace(id);
  if (S.me) { loadAlerts(); loadAgents(); loadDetectors(); loadHistory(); loadEvents(true); }
  if (S.selected && !$("#space-panel").hidden) showSpace(S.selected);
}

// ---- session -------------------------------------------------------------------------------
// Resolves to whether the server answered who we are (false: it did not, or a later ask counts).
async function loadSession() {
  const asked = (S.sessionAsked = (S.sessionAsked || 0) + 1);
  const r = await api("/api/v1/auth/me");
  // only the latest answer counts: one asked before a login (a hello's) may come back after it
  if (asked !== S.sessionAsked) return false;
  if (!r.ok && S.me) return false; // server away: the login is neither confirmed nor ended
  const was = S.me;
  S.me = r.ok ? r.body.user : null;
  // logged out elsewhere, expired, removed or given another role: nothing seen under that
  // login stays on the page
  if (was && (!S.me || S.me.name !== was.name || S.me.role !== was.role)) clearPrivate();
  S.publicRead = r.ok ? r.body.public_read : true;
  if (r.ok) {
    S.siteName = r.body.site_name; $("#site-name").textContent = L(S.siteName);
    S.tz = r.body.timezone; $("#site-tz").textContent = S.tz;
  }
  $("#login-box").hidden = !!S.me;
  $("#who").hidden = !S.me;
  renderWho();
  for (const e of document.querySelectorAll(".private")) e.hidden = !S.me;
  return r.ok;
}

function renderWho() {
  if (S.me) $("#who-name").textContent = S.me.name + paren(tr("role_", S.me.role));
}

async function login(ev) {
  ev.preventDefault();
  const f = ev.target;
  const r = await api("/api/v1/auth/login", { method: "POST",
    body: JSON.stringify({ name: f.name.value, password: f.password.value }) });
  const msg = $("#login-msg");
  if (!r.ok) {
    msg.className = "msg error";
    msg.textContent = r.status === 401 ? t("wrong_login") : errorText(r);
    return;
  }
  f.password.value = "";
  msg.textContent = "";
  // the login was accepted, yet the server does not know us right after: the browser did not
  // keep the cookie (a Secure one on a page that is not a secure context: plain HTTP, not
  // localhost; or cookies blocked). Said, not retried.
  if ((await start()) && !S.me) {
    msg.className = "msg error";
    msg.textContent = t(window.isSecureContext ? "cookie_refused" : "cookie_refused_http");
    return;
  }
  // the form is gone: focus goes on to the page's heading, not back to the top (BODY)
  if (S.me) $("#main-heading").focus();
}

function clearPrivate() {
  S.site = null; S.selected = null; S.spaces.clear(); S.eventsBefore = null; S.eventsPaged = false;
  S.alertMsgs.clear();
  $("#map").replaceChildren();
  $("#space-ids").replaceChildren();
  delete $("#map").dataset.loaded;
  $("#space-panel").hidden = true;
  $("#sp-id").textContent = ""; $("#sp-reason").value = ""; $("#find-msg").textContent = "";
  S.history = null;
  for (const sel of ["#alerts", "#alerts-cleared", "#agents tbody", "#detectors tbody", "#events tbody", "#chart"]) $(sel).replaceChildren();
  $("#raw-box").hidden = true; $("#older").hidden = true; $("#events-msg").textContent = "";
  noteBlind([]); // the alerts that told it are private too
}

async function logout() {
  const r = await api("/api/v1/auth/logout", { method: "POST" });
  // not ended on the server (its database refused): say so, the login still holds
  $("#logout-msg").textContent = r.ok || r.status === 401 ? "" : errorText(r);
  if (!r.ok && r.status !== 401) return;
  clearPrivate();
  await start();
  if (!S.me) $("#login-heading").focus(); // the button pressed is gone
}

// ---- zones ---------------------------------------------------------------------------------
async function loadZones() {
  const r = await api("/api/v1/zones");
  if (S.me) await loadClosures();
  if (r.ok) {
    S.zones = r.body; renderZones();
    if (S.blind) renderLive(!!S.liveOn);
    // the counts as first shown are not news; changes from them are (said by announceZones)
    if (!S.spoken) S.spoken = new Map(S.zones.map((z) => [z.zone, freeSaid(z)]));
    else throttle("announce-zones", announceZones, ANNOUNCE_EVERY_MS);
  }
  return r.ok;
}

function renderZones() {
  $("#zones").replaceChildren(...S.zones.map(zoneCard));
  if (S.zoneSelected) showZonePanel(S.zoneSelected);
}

// the zones managers closed (who, why, how many spaces the closure holds), for the cards
async function loadClosures() {
  const r = await api("/api/v1/zones/closures");
  S.closures = new Map(r.ok ? r.body.map((c) => [c.zone, c]) : []);
  return r.ok;
}

function closureText(c) {
  return `${t("zone_closed_by").replace("{by}", c.closed_by)}${c.closed_reason ? `: ${c.closed_reason}` : ""} · ${fmtTime(c.closed_at)}`;
}

// A zone's close/open panel (managers): chosen from its card, the reason typed there, then
// the button, as for a space
function showZonePanel(id) {
  const z = S.zones.find((x) => x.zone === id);
  const panel = $("#zone-panel");
  if (!z || !(S.me && S.me.can_change)) { panel.hidden = true; S.zoneSelected = null; return; }
  if (S.zoneSelected !== id) { $("#zn-msg").textContent = ""; $("#zn-reason").value = ""; }
  S.zoneSelected = id;
  panel.hidden = false;
  $("#zn-id").textContent = t("zone_panel_for").replace("{zone}", L(z.name));
  const c = S.closures && S.closures.get(id);
  $("#zn-closure").textContent = c ? closureText(c) : "";
}

function zoneDone(b) {
  const n = b.spaces.length;
  const parts = [n || !b.reasoned_again.length
    ? t(b.action === "close" ? "done_zone_close" : "done_zone_open").replace("{n}", n) : t("new_reason")];
  const was = b.closure_was;
  if (was && b.action === "open") parts.push(`${t("opened_zone_was").replace("{by}", was.closed_by)}${was.closed_reason ? `: ${was.closed_reason}` : ""}`);
  if (was && b.action === "close" && was.closed_by !== b.by) parts.push(t("reason_replaces").replace("{by}", was.closed_by));
  if (b.held.length) parts.push(t("cars_on_their_way").replace("{n}", b.held.length));
  if (b.left_closed.length) parts.push(t("left_closed").replace("{list}", b.left_closed.map((x) =>
    `${x.space}${x.closed_by ? ` (${closerName(x.closed_by)}${x.closed_reason ? `: ${x.closed_reason}` : ""})` : ""}`).join(", ")));
  return parts.join(" — ");
}

// Who closed something, as the page says it: the journal names a closure the site file
// makes "site file" (gateway/site_changes.py SITE_FILE_BY)
const closerName = (by) => (!by || by === "site file" ? t("site_file") : by);

// A 409 of an action whose closer was not the one the page showed: who closed it (or that it
// is not closed) and a button to do it anyway, naming that closer (expect_closed_by). Not a
// button that can only fail: an open of what is open has nothing to do, and a close of what
// is closed changes only its reason, so it waits for one in ``reasonField``
function askAnyway(msg, name, action, b, again, reasonField) {
  msg.className = "msg error";
  msg.textContent = "";
  if (action === "open" && !b.closed) {
    msg.textContent = t("open_already").replace("{id}", name);
    return;
  }
  const what = b.closed
    ? `${t("closed_by_other").replace("{id}", name).replace("{by}", closerName(b.closed_by))}${b.closed_reason ? `: ${b.closed_reason}` : ""}`
    : t("not_closed_now").replace("{id}", name);
  const needsReason = action === "close" && b.closed;
  const ask = needsReason && !reasonField.value.trim() ? "ask_reason" : action === "close" ? "ask_close_anyway" : "ask_open_anyway";
  msg.append(`${what} — ${t(ask)} `);
  const go = el("button", { type: "button", class: "anyway", text: t(action === "close" ? "close_anyway" : "open_anyway") });
  go.onclick = () => again(b.closed ? b.closed_by : null);
  if (needsReason) {
    const ready = () => { go.disabled = !reasonField.value.trim(); };
    ready();
    reasonField.addEventListener("input", ready);
    if (go.disabled) reasonField.focus();
  }
  msg.append(go);
}

const notAsExpected = (r) => r.status === 409 && r.body && typeof r.body.closed === "boolean";

async function controlZone(action, expect) {
  const id = S.zoneSelected;
  if (!id) return;
  const msg = $("#zn-msg");
  const reason = $("#zn-reason").value.trim();
  const body = reason ? { reason } : {};
  // the closure this page shows: the action changes nothing if it is no longer that one
  const c = S.closures && S.closures.get(id);
  body.expect_closed_by = expect !== undefined ? expect : c ? c.closed_by : null;
  const r = await api(`/api/v1/zones/${encodeURIComponent(id)}/${action}`, { method: "POST",
    body: JSON.stringify(body) });
  if (notAsExpected(r)) {
    askAnyway(msg, zoneName(id), action, r.body, (by) => controlZone(action, by), $("#zn-reason"));
    await loadClosures();
    renderZones();
    return;
  }
  msg.className = r.ok ? "msg ok" : "msg error";
  msg.textContent = r.ok ? `${zoneName(id)}: ${zoneDone(r.body)}` : errorText(r);
  if (r.ok && S.zoneSelected === id && $("#zn-reason").value.trim() === reason) $("#zn-reason").value = "";
  await loadClosures();
  renderZones();
}

// What a zone's card says: what a sign over the zone would (the server's `offered`, by the
// signs' rule): the free spaces not held for a car already sent there, or "--" (null) rather
// than a count that lies when too much of the zone is unknown.
function zoneShown(z) {
  return { blind: z.offered === null, offered: z.offered ?? 0 };
}

function zoneCard(z) {
  if (S.stale) // the stream is down: the last counts are history, not what is free now
    return el("div", { class: "zone stale", "data-zone": z.zone }, el("div", { class: "name", text: L(z.name) }),
      el("div", { class: "free unknown", text: "--" }), el("div", { class: "sub", text: staleNote() }));
  const bar = el("div", { class: "stack" }, ...STATES.filter((s) => z[s] > 0).map((s) =>
    el("span", { class: s, style: `width:${(100 * z[s]) / Math.max(z.total, 1)}%`, title: `${t(s)} ${z[s]}` })));
  const { blind, offered } = zoneShown(z);
  const shut = z.total > 0 && z.closed === z.total; // as its signs say: closed, not "0"
  return el("div", { class: "zone", "data-zone": z.zone },
    el("div", { class: "name", text: L(z.name) }),
    el("div", { class: "free" + (blind ? " unknown" : offered === 0 ? " none" : ""),
      "data-free": offered, text: blind ? "--" : shut ? t("zone_shut") : String(offered) }),
    el("div", { class: "sub", text: `${t("free")} · ${t("of")} ${z.total} · ${t("occupied")} ${z.occupied}` +
      (z.held ? ` · ${t("held")} ${z.held}` : "") +
      (z.unknown ? ` · ${t("unknown")} ${z.unknown}` : "") + (z.closed ? ` · ${t("closed")} ${z.closed}` : "") }),
    bar, ...zoneClosureParts(z));
}

// a closed zone's card says by whom and why; a manager's card has the way to close or open it
function zoneClosureParts(z) {
  const parts = [];
  const c = S.me && S.closures && S.closures.get(z.zone);
  if (c) parts.push(el("div", { class: "sub zone-closure", text: closureText(c) }));
  if (S.me && S.me.can_change) {
    const b = el("button", { type: "button", class: "zone-act", text: t("zone_actions"),
      "aria-label": `${t("zone_actions")} ${L(z.name)}` });
    b.onclick = () => { showZonePanel(z.zone); $("#zn-reason").focus(); };
    parts.push(b);
  }
  return parts;
}

function onZone(data) {
  const i = S.zones.findIndex((z) => z.zone === data.zone);
  if (i < 0 || typeof data.free !== "number") return later("zones", loadZones, 200);
  // a zone closed or opened (here or on another page): who closed it, for its card
  if (S.me && data.closed !== undefined && data.closed !== S.zones[i].closed)
    throttle("closures", async () => { await loadClosures(); renderZones(); }, 1000);
  S.zones[i] = { ...S.zones[i], ...data };
  if (S.blind) renderLive(!!S.liveOn); // known counts again: the badge says live
  dirty.zones.add(data.zone);
  redrawSoon();
  throttle("announce-zones", announceZones, ANNOUNCE_EVERY_MS);
}

// ---- signs ---------------------------------------------------------------------------------
// Until when (on performance.now(), ms) a sign may show content that reached this page at
// `arrived`: for its validity (expires - ts) from then, as the real sign judges it
// (firmware_sim/display.py) on its monotonic clock; never on the browser's wall clock, which
// may be minutes off the gateway's. `serverNow` (the server's clock when it answered, if known)
// also stops content that had waited at the server before it came here.
function heldUntil(c, arrived, serverNow) {
  if (!c || !(c.expires > c.ts)) return -Infinity; // the real sign refuses such content
  let left = c.expires - c.ts;
  if (Number.isFinite(serverNow)) left = Math.min(left, c.expires - serverNow + 1); // Date: whole seconds
  return arrived + left * 1000;
}

async function loadSigns() {
  const r = await api("/api/v1/displays");
  if (!r.ok) return false;
  const here = performance.now();
  const serverNow = r.date ? Date.parse(r.date) / 1000 : NaN;
  // the server's `expired` is judged on its own clock, which is the one the content's times are from
  S.displays = r.body.map((d) => ({ ...d, until: d.expired ? -Infinity : heldUntil(d.content, here, serverNow) }));
  renderSigns();
  return true;
}

// Both languages, Chinese first, as the sign itself shows them whatever the page's language
// (parking.payloads.both_languages: once where they are the same, e.g. "12").
const both = (x) => (!x ? "" : x.zh === x.en ? x.zh : `${x.zh} ${x.en}`);

function renderSigns() {
  const now = performance.now();
  $("#signs").replaceChildren(...S.displays.map((d) => signEl(d, now)));
}

function signEl(d, now) {
  const c = d.content;
  const expired = !(now < d.until);
  const lines = c ? c.lines : [];
  return el("div", { class: "sign" + (expired ? " expired" : ""), "data-display": d.display, title: expired ? t("expired") : "" },
    el("div", { class: "sname", text: L(d.name) }),
    ...lines.map((ln) => el("div", { class: `line ${ln.status}`, lang: "zh-CN" },
      el("span", { class: "label", text: both(ln.label) }),
      el("span", { class: "arrow", text: ARROWS[ln.arrow] || "" }),
      el("span", { class: "count", text: expired ? "--" : both(ln.text) }))));
}

// A sign past its expiry shows its fallback, as the real one does: redrawn when that changes.
function expireSigns() {
  const now = performance.now();
  for (const d of S.displays) {
    const e = document.querySelector(`#signs .sign[data-display="${CSS.escape(d.display)}"]`);
    if (e && e.classList.contains("expired") !== !(now < d.until)) dirty.signs.add(d.display);
  }
  if (dirty.signs.size) redrawDirty();
}

function onDisplay(data) {
  const i = S.displays.findIndex((d) => d.display === data.display);
  if (i < 0 || !Array.isArray(data.lines)) return later("signs", loadSigns, 200);
  S.displays[i] = { ...S.displays[i], content: data, expired: false, until: heldUntil(data, performance.now()) };
  dirty.signs.add(data.display);
  redrawSoon();
}

// ---- map -----------------------------------------------------------------------------------
async function loadMap() {
  if (!S.site) {
    const r = await api("/api/v1/site");
    if (!r.ok) return false;
    S.site = r.body;
    $("#site-name").textContent = L(S.site.name);
    drawMap();
  }
  const r = await api("/api/v1/spaces");
  if (!r.ok) return false;
  for (const s of r.body) { S.spaces.set(s.space, s); paintSpace(s.space); }
  if (S.selected) showSpace(S.selected);
  $("#map").dataset.loaded = "true"; // states are on the map (the geometry alone is all unknown)
  return true;
}

function drawMap() {
  const site = S.site;
  const pad = 4;
  const nodes = new Map(site.lane_nodes.map((n) => [n.id, n]));
  const box = $("#map");
  box.replaceChildren();
  polygons.clear();
  // the spaces by id for the space field (a way in without the map)
  $("#space-ids").replaceChildren(...site.spaces.map((sp) => el("option", { value: sp.id })));
  for (const lv of site.levels) {
    const [x0, y0, x1, y1] = lv.bounds;
    const X = (x) => (x - x0 + pad).toFixed(2);
    const Y = (y) => (y1 - y + pad).toFixed(2); // y grows northwards on the site, downwards in SVG
    // a group of buttons (the spaces), named after its level: not an image hiding them
    const root = svg("svg", { viewBox: `0 0 ${(x1 - x0 + 2 * pad).toFixed(1)} ${(y1 - y0 + 2 * pad).toFixed(1)}`,
      "data-level": lv.id, role: "group", "aria-label": t("map_of").replace("{level}", L(lv.name)) });
    const bays = []; // [polygon, centre x, centre y, corners] in the SVG's units: for arrow keys, taps
    for (const [a, b] of site.lane_edges) {
      const na = nodes.get(a), nb = nodes.get(b);
      if (na && nb && na.level === lv.id && nb.level === lv.id)
        root.append(svg("line", { class: "lane", x1: X(na.at[0]), y1: Y(na.at[1]), x2: X(nb.at[0]), y2: Y(nb.at[1]) }));
    }
    for (const sp of site.spaces) {
      if (sp.level !== lv.id) continue;
      // a button each, reached by the keyboard: one stop per level for Tab (the last one
      // focused, at first the first), the arrow keys between them
      const p = svg("polygon", { class: "space", "data-space": sp.id, "data-state": "unknown",
        points: sp.polygon.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "),
        role: "button", tabindex: bays.length ? "-1" : "0" });
      p.append(svg("title"));
      labelSpace(p, sp.id, { state: "unknown" });
      polygons.set(sp.id, p);
      const pts = sp.polygon.map(([x, y]) => ({ x: Number(X(x)), y: Number(Y(y)) }));
      bays.push([p, pts.reduce((a, q) => a + q.x, 0) / pts.length, pts.reduce((a, q) => a + q.y, 0) / pts.length, pts]);
      root.append(p);
    }
    for (const d of site.displays) {
      if (d.level !== lv.id) continue;
      const m = svg("rect", { class: "sign-mark", x: (X(d.at[0]) - 1.5).toFixed(2), y: (Y(d.at[1]) - 1.5).toFixed(2), width: 3, height: 3 });
      const tt = svg("title"); tt.textContent = L(d.name); m.append(tt);
      root.append(m);
    }
    for (const z of site.zones) {
      if (z.level !== lv.id) continue;
      const mine = site.spaces.filter((s) => s.zone === z.id);
      if (!mine.length) continue;
      const xs = mine.flatMap((s) => s.polygon.map((p) => p[0])), ys = mine.flatMap((s) => s.polygon.map((p) => p[1]));
      const lab = svg("text", { class: "label", x: X(Math.min(...xs)), y: (Y(Math.max(...ys)) - 1).toFixed(2) });
      lab.setAttribute("data-zone-label", z.id);
      lab.textContent = L(z.name); // the site's name for it, in the page's language
      root.append(lab);
    }
    root.addEventListener("click", (ev) => {
      const id = ev.target.getAttribute && ev.target.getAttribute("data-space");
      if (id) return openSpace(id);
      // a tap beside a space (they are a few pixels wide on a phone): the nearest one, if
      // close enough (what a fingertip covers)
      if (ev.target !== root && !ev.target.classList.contains("lane")) return;
      const near = nearestSpace(root, bays, ev.clientX, ev.clientY);
      if (near) openSpace(near);
    });
    root.addEventListener("keydown", (ev) => {
      const id = ev.target.getAttribute && ev.target.getAttribute("data-space");
      if (!id) return;
      if (ev.key === "Enter" || ev.key === " " || ev.key === "Spacebar") {
        ev.preventDefault(); // Space would scroll the page
        openSpace(id);
        return;
      }
      const next = spaceToward(bays, ev.target, ev.key);
      if (next) { ev.preventDefault(); next.focus(); }
    });
    const level = el("div", { class: "level" }, el("h3", { "data-level-title": lv.id, text: L(lv.name) }),
      el("div", { class: "pan" }, root));
    // Tab comes back to the space last focused (listened for on the level's box: a focus
    // listener on the SVG itself would put the SVG in the Tab order too)
    level.addEventListener("focusin", (ev) => {
      if (!ev.target.getAttribute || !ev.target.getAttribute("data-space")) return;
      for (const q of root.querySelectorAll('.space[tabindex="0"]')) if (q !== ev.target) q.setAttribute("tabindex", "-1");
      ev.target.setAttribute("tabindex", "0");
    });
    box.append(level);
  }
}

// The space the arrow key `key` moves to from `from`: the nearest in that direction, preferring
// one in line (the next one in its row, the one across the aisle); Home/End: first/last.
function spaceToward(bays, from, key) {
  if (key === "Home") return bays.length ? bays[0][0] : null;
  if (key === "End") return bays.length ? bays[bays.length - 1][0] : null;
  const dir = { ArrowRight: [1, 0], ArrowLeft: [-1, 0], ArrowDown: [0, 1], ArrowUp: [0, -1] }[key];
  const here = bays.find((b) => b[0] === from);
  if (!dir || !here) return null;
  let best = null, bestScore = Infinity;
  for (const b of bays) {
    const dx = b[1] - here[1], dy = b[2] - here[2];
    const along = dx * dir[0] + dy * dir[1], across = Math.abs(dx * dir[1] - dy * dir[0]);
    if (along < 0.5 || across > along * 2) continue; // behind, or more sideways than ahead
    const score = along + 3 * across;
    if (score < bestScore) { best = b[0]; bestScore = score; }
  }
  return best;
}

// The id of the space nearest a tap at (cx, cy) (client pixels), if within a fingertip of it.
function nearestSpace(root, bays, cx, cy) {
  const m = root.getScreenCTM();
  if (!m) return null;
  const pt = new DOMPoint(cx, cy).matrixTransform(m.inverse());
  const reach = (matchMedia("(pointer: coarse)").matches ? 16 : 8) / Math.abs(m.a); // px -> SVG units
  let best = null, bestD = Infinity;
  for (const [p, , , pts] of bays) {
    const d = distanceToPolygon(pt.x, pt.y, pts);
    if (d < bestD) { best = p; bestD = d; }
  }
  return best && bestD <= reach ? best.getAttribute("data-space") : null;
}

function distanceToPolygon(x, y, points) {
  let d = Infinity, inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const a = points[j], b = points[i];
    if ((a.y > y) !== (b.y > y) && x < ((b.x - a.x) * (y - a.y)) / (b.y - a.y) + a.x) inside = !inside;
    const vx = b.x - a.x, vy = b.y - a.y, len = vx * vx + vy * vy;
    const k = len ? Math.max(0, Math.min(1, ((x - a.x) * vx + (y - a.y) * vy) / len)) : 0;
    d = Math.min(d, Math.hypot(x - a.x - k * vx, y - a.y - k * vy));
  }
  return inside ? 0 : d;
}

// A space's name for screen readers and its tooltip: "A-001, free" in the page's language.
function labelSpace(p, id, s) {
  const sep = S.lang === "zh" ? "，" : ", ";
  const text = [id, t(s.state), s.held && t("held")].filter(Boolean).join(sep);
  p.setAttribute("aria-label", text);
  p.firstChild.textContent = text;
}

function renderLevelTitles() {
  if (!S.site) return;
  for (const lv of S.site.levels) {
    const h = document.querySelector(`[data-level-title="${lv.id}"]`);
    if (h) h.textContent = L(lv.name);
  }
  for (const lab of document.querySelectorAll("[data-zone-label]")) lab.textContent = zoneName(lab.dataset.zoneLabel);
  for (const root of document.querySelectorAll("#map svg[data-level]")) {
    const lv = S.site.levels.find((x) => x.id === root.dataset.level);
    if (lv) root.setAttribute("aria-label", t("map_of").replace("{level}", L(lv.name)));
  }
  for (const [id, p] of polygons) if (!S.spaces.has(id)) labelSpace(p, id, { state: "unknown" });
}

function paintSpace(id) {
  const s = S.spaces.get(id);
  const p = polygons.get(id);
  if (!s || !p) return;
  p.setAttribute("data-state", s.state);
  p.classList.toggle("held", !!s.held);
  labelSpace(p, id, s);
}

function onSpace(data) {
  if (!data.space || !STATES.includes(data.state)) return later("spaces", loadMap, 300);
  const s = S.spaces.get(data.space) || { space: data.space };
  S.spaces.set(data.space, { ...s, state: data.state, since: Date.now() / 1000 });
  paintSpace(data.space);
  if (S.selected === data.space) showSpace(data.space);
  if (!S.eventsPaged) throttle("events", () => loadEvents(true), 1000); // the newest page follows along
}

function showSpace(id) {
  const prev = S.selected && polygons.get(S.selected);
  if (prev) prev.classList.remove("selected");
  S.selected = id;
  const s = S.spaces.get(id) || { state: "unknown" };
  const p = polygons.get(id);
  if (p) p.classList.add("selected");
  $("#space-panel").hidden = false;
  if ($("#sp-id").textContent !== id) { // a message, and a reason being typed, are about their space
    $("#sp-msg").textContent = "";
    $("#sp-reason").value = "";
  }
  $("#sp-id").textContent = id;
  const chip = $("#sp-state");
  chip.className = `chip ${s.state}`;
  chip.textContent = t(s.state);
  const colon = S.lang === "zh" ? "：" : ": ";
  $("#sp-info").textContent = [s.zone && `${t("zone")}${colon}${zoneName(s.zone)}`,
    s.kinds && s.kinds.map((k) => tr("kind_", k)).join(S.lang === "zh" ? "、" : ", "),
    `${t("since")} ${fmtTime(s.since)}`, s.source && `${t("source")}${colon}${sourceText(s.source)}`, s.held && t("held")]
    .filter(Boolean).join(" · ");
  showClosure(id, s);
}

// A space chosen (on the map, by keyboard or by its id): its panel, shown in full on the
// screen (below the map, out of sight on a phone) and focused, so what was opened is read out.
function openSpace(id) {
  showSpace(id);
  const panel = $("#space-panel");
  panel.scrollIntoView({ block: "nearest" });
  $("#sp-heading").focus({ preventScroll: true });
}

// the space field: the same panel, without the map
function findSpace(ev) {
  ev.preventDefault();
  const want = $("#find-space").value.trim();
  const msg = $("#find-msg");
  if (!want || !S.site) return;
  const sp = S.site.spaces.find((x) => x.id === want) || S.site.spaces.find((x) => x.id.toLowerCase() === want.toLowerCase());
  msg.textContent = sp ? "" : t("no_space").replace("{id}", want);
  if (sp) openSpace(sp.id);
}

// who closed a closed space, when and why: the newest manager's close in its events (the
// reason of a close repeated with a new reason is the newest)
async function showClosure(id, s) {
  const p = $("#sp-closure");
  const key = s.state === "closed" && S.me ? `${id}@${s.since}@${S.lang}` : "";
  if (p.dataset.key === key) return;
  p.dataset.key = key;
  p.textContent = "";
  if (!key) return;
  const r = await api(`/api/v1/events?space=${encodeURIComponent(id)}&limit=20`);
  if (!r.ok || p.dataset.key !== key) return; // another space or state meanwhile
  const e = r.body.items.find((x) => x.new === "closed" && x.source === "manager");
  S.closer = { key, by: e ? e.agent : undefined }; // what a close or open of it expects
  if (e) p.textContent = [`${t("closed_by")} ${closerName(e.agent)}`,
    e.zone_closure && t("with_zone").replace("{zone}", zoneName(e.zone_closure)), fmtTime(e.ts),
    e.reason && `${t("reason")}: ${e.reason}`].filter(Boolean).join(" · ");
}

// after a close: a car sent to the space may be on its way; after an open: whose closure it
// ended (another manager's, perhaps), so nobody is surprised
function endedClosure(b) {
  if (b && b.action === "close" && b.held) return ` — ${t("car_on_its_way")}`;
  if (!b || b.action !== "open" || !b.closed_by) return "";
  const who = b.closed_with_zone
    ? t("was_closed_with_zone").replace("{zone}", zoneName(b.closed_with_zone)).replace("{by}", b.closed_by)
    : t("was_closed_by").replace("{by}", closerName(b.closed_by));
  const earlier = (b.earlier_closes || []).map((c) => `${closerName(c.closed_by)}${c.closed_reason ? `: ${c.closed_reason}` : ""}`);
  return ` — ${who}${b.closed_reason ? `: ${b.closed_reason}` : ""}${earlier.length ? `; ${t("earlier_closed_by").replace("{list}", earlier.join(", "))}` : ""}`;
}

// the closer the page shows for space ``id`` (null: it shows it not closed; undefined: it
// does not know, e.g. still loading or closed by the site file: no precondition)
function shownCloser(id) {
  const s = S.spaces.get(id);
  if (!s || s.state !== "closed") return s ? null : undefined;
  const p = $("#sp-closure");
  return S.closer && S.closer.key === p.dataset.key && p.dataset.key ? S.closer.by : undefined;
}

async function controlSpace(action, expect) {
  const id = S.selected;
  if (!id) return;
  const msg = $("#sp-msg");
  const reason = $("#sp-reason").value.trim();
  const body = reason ? { reason } : {};
  const shown = expect !== undefined ? expect : shownCloser(id);
  if (shown !== undefined) body.expect_closed_by = shown;
  const r = await api(`/api/v1/spaces/${encodeURIComponent(id)}/${action}`, { method: "POST",
    body: JSON.stringify(body) });
  if (notAsExpected(r)) {
    askAnyway(msg, id, action, r.body, (by) => controlSpace(action, by), $("#sp-reason"));
    return;
  }
  msg.className = r.ok ? "msg ok" : "msg error";
  msg.textContent = r.ok ? `${id}: ${t(action === "close" ? "done_close" : "done_open")}${endedClosure(r.body)}` : errorText(r);
  // the reason went with this action; it is not the next one's (unless retyped meanwhile)
  if (r.ok && S.selected === id && $("#sp-reason").value.trim() === reason) $("#sp-reason").value = "";
}

// ---- alerts and health ---------------------------------------------------------------------
// An alert's list item: what, since when, and who acknowledged it, when and their note; for
// a manager, until then, a note field and the button.
function alertItem(a) {
  const li = el("li", { class: `${a.severity}${a.acknowledged_by ? " acked" : ""}`, "data-alert": a.id },
    el("span", { text: L(a.message) }), el("span", { class: "when", text: `${t("since")} ${fmtTime(a.since)}` }));
  if (a.episodes > 1) li.append(el("span", { class: "episodes", text: t("episodes").replace("{n}", a.episodes) }));
  if (a.acknowledged_by) {
    li.append(el("span", { class: "ack-by", text: `${t("acked_by")}${a.acknowledged_by} · ${fmtTime(a.acknowledged_at)}` }));
    if (a.note) li.append(el("span", { class: "ack-note-text", text: t("note") + a.note }));
  } else if (S.me && S.me.can_change) {
    const note = el("input", { class: "ack-note", maxlength: "200", placeholder: t("note_ph"), "aria-label": t("note_ph") });
    const b = el("button", { type: "button", class: "ack", text: t("ack") });
    const send = async () => {
      b.disabled = true;
      const text = note.value.trim();
      const res = await api(`/api/v1/alerts/${encodeURIComponent(a.id)}/acknowledge`, { method: "POST",
        body: JSON.stringify(text ? { note: text } : {}) });
      b.disabled = false;
      if (res.ok) S.alertMsgs.delete(a.id);
      else if (res.status === 409 && res.body && res.body.acknowledged_by) // another manager was first
        S.alertMsgs.set(a.id, t("ack_taken").replace("{by}", res.body.acknowledged_by).replace("{t}", fmtTime(res.body.acknowledged_at)));
      else S.alertMsgs.set(a.id, errorText(res));
      if (S.alertMsgs.has(a.id)) // said for a minute, not for as long as the alert lasts
        later(`alert-msg ${a.id}`, () => { if (S.alertMsgs.delete(a.id)) loadAlerts(); }, 60000);
      loadAlerts(); // shown as the server has it: acknowledged by whom, when, with what note
    };
    b.onclick = send;
    note.addEventListener("keydown", (ev) => { if (ev.key === "Enter") send(); });
    li.append(note, b);
  }
  const msg = S.alertMsgs.get(a.id);
  if (msg) li.append(el("span", { class: "msg error", role: "status", text: msg }));
  return li;
}

async function loadAlerts() {
  const asked = (S.alertsAsked = (S.alertsAsked || 0) + 1);
  loadClearedAlerts(); // an alert event may be a clear: the list below changes too
  const r = await api("/api/v1/alerts");
  if (asked !== S.alertsAsked) return true; // a newer answer is on its way
  if (!r.ok) { noteBlind([]); return false; }
  noteBlind(r.body);
  const ul = $("#alerts");
  const ids = new Set(r.body.map((a) => a.id));
  for (const id of [...S.alertMsgs.keys()]) if (!ids.has(id)) S.alertMsgs.delete(id);
  if (!r.body.length) return ul.replaceChildren(el("li", { class: "none", text: t("no_alerts") }));
  // an item shown as it was is kept, so a note being typed survives the reloads every alert
  // and agent event brings; one that changed (acknowledged elsewhere) is drawn again
  const shown = new Map([...ul.children].map((li) => [li.dataset.sig, li]));
  const items = r.body.map((a) => {
    const sig = JSON.stringify([a, S.lang, S.tz, !!(S.me && S.me.can_change), S.alertMsgs.get(a.id) || ""]);
    const li = shown.get(sig) || alertItem(a);
    li.dataset.sig = sig;
    return li;
  });
  items.forEach((li, i) => { if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null); });
  while (ul.children.length > items.length) ul.lastElementChild.remove();
}

// Alerts that cleared by themselves in the last day (a node dead for 3 minutes at night):
// what, from when to when, and who had acknowledged it; read only.
async function loadClearedAlerts() {
  const asked = (S.clearedAsked = (S.clearedAsked || 0) + 1);
  const r = await api(`/api/v1/alerts?cleared_since=${Math.floor(Date.now() / 1000 - 86400)}`);
  if (asked !== S.clearedAsked || !r.ok) return; // a newer answer is on its way, or none
  $("#alerts-cleared-box").hidden = !r.body.length;
  $("#alerts-cleared").replaceChildren(...r.body.map((a) => {
    const li = el("li", { class: `${a.severity} cleared`, "data-alert": a.id }, el("span", { text: L(a.message) }),
      el("span", { class: "when", text: `${t("since")} ${fmtTime(a.since)} · ${t("cleared_at")} ${fmtTime(a.cleared)}` }));
    if (a.acknowledged_by) li.append(el("span", { class: "ack-by", text: `${t("acked_by")}${a.acknowledged_by}${a.note ? " · " + a.note : ""}` }));
    return li;
  }));
}

async function loadAgents() {
  const asked = (S.agentsAsked = (S.agentsAsked || 0) + 1);
  const r = await api("/api/v1/agents");
  if (asked !== S.agentsAsked) return true; // a newer answer is on its way
  if (!r.ok) return false;
  $("#agents tbody").replaceChildren(...r.body.map((a) => {
    const bad = a.nodes.filter((n) => n.status !== "ok").length;
    return el("tr", {},
      el("td", { text: a.agent }),
      el("td", { class: a.online && (!a.status || a.status === "ok") ? "good" : "bad",
        text: a.online ? (a.status ? `${t("online")} · ${tr("st_", a.status)}` : t("online"))
          : a.heard === false ? tr("st_", "never_seen") : t("offline") }),
      el("td", { class: bad ? "bad" : "", text: a.nodes.length ? `${a.nodes.length - bad}/${a.nodes.length}` : "—" }),
      el("td", { text: fmtTime(a.last_seen) }));
  }));
}

async function loadDetectors() {
  const box = $("#raw-box");
  box.hidden = !(S.me && S.me.can_read_raw);
  if (box.hidden) return;
  const asked = (S.detectorsAsked = (S.detectorsAsked || 0) + 1);
  const r = await api("/api/v1/detectors/raw");
  if (asked !== S.detectorsAsked) return true; // a newer answer is on its way
  if (!r.ok) return false;
  const bad = (d) => (d.status === "ok" ? 1 : 0); // faults first
  const rows = [...r.body].sort((a, b) => bad(a) - bad(b));
  $("#detectors tbody").replaceChildren(...rows.map((d) => el("tr", {},
    el("td", { text: `${d.source}/${d.node}/${d.index}` }), el("td", { text: d.space || "—" }),
    el("td", { class: d.status === "ok" ? "good" : "bad", text: tr("st_", d.status) }),
    el("td", { text: d.raw == null ? "—" : String(d.raw) }),
    el("td", { text: d.battery == null ? "—" : `${d.battery}%` }),
    el("td", { text: Object.entries(d.node_errors).map(([k, v]) => `${k} ${v}`).join(", ") || "—" }))));
}

// ---- history chart -------------------------------------------------------------------------
async function loadHistory() {
  const end = Math.floor(Date.now() / 1000);
  const start = end - S.range;
  const step = S.range <= 86400 ? 900 : 3600;
  const r = await api(`/api/v1/history?start=${start}&end=${end}&step=${step}`);
  if (r.ok) { S.history = r.body; drawChart(r.body); }
}

// The chart's width in its own units: 640, scaled to the box (as on a desktop); on a box
// narrower than that, the box's width in CSS pixels, so its 11-unit text stays 11 px.
function chartWidth() {
  const w = Math.floor($("#chart").getBoundingClientRect().width);
  return w > 0 && w < 640 ? Math.max(w, 240) : 640;
}

// what the chart shows, in words: the range, and each zone's latest occupancy
function chartSummary(h) {
  const range = t(h.end - h.start <= 86400 ? "last_day" : "last_week");
  const zones = h.series.map((s) => {
    const last = [...s.points].reverse().find((p) => p.free + p.occupied > 0);
    return `${L(s.name)} ${last ? `${Math.round((100 * last.occupied) / (last.free + last.occupied))}%` : t("no_data")}`;
  });
  const label = t("chart_label").replace("{range}", range).replace("{list}", zones.join(listSep()) || t("no_data"));
  const down = (h.outages || []).length;
  return down ? `${label}${listSep()}${t("gateway_down_n").replace("{n}", down)}` : label;
}

function drawChart(h) {
  const W = chartWidth(), H = 220, l = 36, b = 22, top = 8, right = 8;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": chartSummary(h), "data-width": W });
  const x = (ts) => l + ((ts - h.start) / Math.max(h.end - h.start, 1)) * (W - l - right);
  const y = (v) => top + (1 - v) * (H - top - b);
  for (const v of [0, 0.5, 1]) {
    root.append(svg("line", { class: "axis", x1: l, x2: W - right, y1: y(v), y2: y(v) }));
    const tx = svg("text", { x: 2, y: y(v) + 4 }); tx.textContent = `${v * 100}%`; root.append(tx);
  }
  // the first time from the left, the middle one centred, the last up to the right: apart
  // however narrow the chart
  for (const [ts, anchor] of [[h.start, "start"], [(h.start + h.end) / 2, "middle"], [h.end, "end"]]) {
    const tx = svg("text", { x: x(ts), y: H - 5, "text-anchor": anchor });
    tx.textContent = fmtTime(ts, { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" });
    root.append(tx);
  }
  // the gateway's own downtime, shaded (the samples may fall either side of a short one);
  // its tooltip to the second, since an outage may be shorter than a minute
  const when = { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" };
  for (const o of h.outages || []) {
    const x0 = x(Math.max(o.start, h.start)), x1 = x(Math.min(o.end, h.end));
    const band = svg("rect", { class: "outage", x: x0, y: top, width: Math.max(x1 - x0, 1.5), height: H - top - b });
    const tip = svg("title");
    tip.textContent = t("gateway_down").replace("{from}", fmtTime(o.start, when)).replace("{to}", fmtTime(o.end, when));
    band.append(tip);
    root.append(band);
  }
  const legend = el("div", { class: "chart-legend" });
  h.series.forEach((s, i) => {
    const colour = ZONE_COLOURS[i % ZONE_COLOURS.length];
    const dash = ZONE_DASHES[i % ZONE_DASHES.length];
    const dashed = dash ? { "stroke-dasharray": dash } : {};
    // a point where the zone is wholly unknown is a gap: the line stops there and starts again
    // after it, rather than drawing a straight line across hours nobody measured
    const runs = [[]];
    for (const p of s.points) {
      if (p.free + p.occupied > 0) runs[runs.length - 1].push(`${x(p.ts).toFixed(1)},${y(p.occupied / (p.free + p.occupied)).toFixed(1)}`);
      else if (runs[runs.length - 1].length) runs.push([]);
    }
    for (const run of runs) {
      if (run.length > 1) root.append(svg("polyline", { class: "series", stroke: colour, ...dashed, points: run.join(" "), "data-zone": s.zone }));
      else if (run.length === 1) { // a lone known point between gaps: a small dot, not nothing
        const [cx, cy] = run[0].split(",");
        root.append(svg("circle", { cx, cy, r: 1.5, fill: colour, "data-zone": s.zone }));
      }
    }
    const pts = runs.flat();
    if (pts.length) { // the newest point as a dot, so a short history is visible too
      const [cx, cy] = pts[pts.length - 1].split(",");
      root.append(svg("circle", { cx, cy, r: 3, fill: colour }));
    }
    const key = svg("svg", { viewBox: "0 0 28 6", "aria-hidden": "true", focusable: "false" });
    key.append(svg("line", { x1: 0, y1: 3, x2: 28, y2: 3, stroke: colour, ...dashed }));
    legend.append(el("span", { "data-zone": s.zone }, key, L(s.name)));
  });
  $("#chart").replaceChildren(root, legend);
}

// ---- events --------------------------------------------------------------------------------
function eventQuery() {
  const f = $("#event-filter");
  const q = new URLSearchParams();
  if (f.space.value.trim()) q.set("space", f.space.value.trim());
  // whole days at the site, the "to" day included
  if (f.from.value) q.set("since", String(siteMidnight(f.from.value)));
  if (f.to.value) q.set("until", String(siteMidnight(nextDay(f.to.value))));
  return q;
}

async function loadEvents(fresh) {
  const q = eventQuery();
  $("#csv").href = `/api/v1/events.csv?${q}`;
  q.set("limit", "25");
  if (!fresh && S.eventsBefore) q.set("before", String(S.eventsBefore));
  const r = await api(`/api/v1/events?${q}`);
  const msg = $("#events-msg");
  if (!r.ok) { msg.className = "msg error"; msg.textContent = errorText(r); return; }
  msg.textContent = "";
  const rows = r.body.items.map((e) => el("tr", {},
    el("td", { text: fmtTime(e.ts) }), el("td", { text: e.space }),
    el("td", { text: `${t(e.old || "unknown")} → ${t(e.new)}` }),
    el("td", { text: sourceText(e.source, e.agent) + (e.zone_closure ? ` (${t("with_zone").replace("{zone}", zoneName(e.zone_closure))})` : "") }),
    el("td", { text: e.reason || "" })));
  const body = $("#events tbody");
  if (fresh) body.replaceChildren(...rows); else body.append(...rows);
  S.eventsBefore = r.body.next_before;
  S.eventsPaged = !fresh;
  $("#older").hidden = !S.eventsBefore;
}

// ---- live stream ---------------------------------------------------------------------------
const hms = (s) => fmtTime(s, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
// why the stream is refused, and in how many seconds the page tries again (null: it is not)
const refusedText = () => S.refused
  && t(S.refused.status === 429 ? "streams_full" : "streams_busy")
    .replace("{s}", String(Math.max(0, Math.ceil((S.refused.retryAt - Date.now()) / 1000))));

// The wait shown counts down: redrawn as each of its seconds passes, until the retry (drawing
// only: the retry is the "reconnect" timer's).
function tickRefused() {
  if (!S.refused) return;
  renderLive(false); renderStale();
  const left = S.refused.retryAt - Date.now();
  if (left > 0) later("refusedTick", tickRefused, left % 1000 || 1000);
}

// the badge says whether this page hears the server; while it does, an open broker_lost or
// gateway_offline alert (S.blind, logged in only) says the server itself hears nothing
function renderLive(on) {
  S.liveOn = on;
  const e = $("#live");
  // only while the counts say so too: the alert is kept open a while after the gateway
  // or broker came back (agents settling), when the counts are live again already
  const blind = on && S.blind && !(S.zones || []).some((z) => z.free + z.occupied > 0);
  e.className = "live " + (on ? "on" : "off") + (blind ? " blind" : "");
  const refused = !on && S.refused;
  e.textContent = t(blind ? `live_${S.blind}` : on ? "live" : refused ? (S.refused.status === 429 ? "live_full" : "live_busy") : (S.es ? "reconnecting" : "connecting"));
  e.title = refused ? refusedText() : blind ? t("live_blind_title") : "";
}

function noteBlind(alerts) {
  const a = alerts.find((x) => x.kind === "broker_lost" || x.kind === "gateway_offline");
  const blind = a ? a.kind : null;
  if (blind !== S.blind) { S.blind = blind; renderLive(!!S.liveOn); }
}

const staleNote = () => {
  const since = t("not_live_since").replace("{t}", hms(S.downSince));
  return S.refused ? `${since}${S.lang === "zh" ? "：" : ": "}${refusedText()}` : since;
};

// Sections showing live state say so when they are not live any more (their CSS greys them).
function renderStale() {
  for (const sec of document.querySelectorAll("section[data-live]")) {
    sec.classList.toggle("stale", S.stale);
    const note = sec.querySelector(".stale-note");
    note.hidden = !S.stale;
    note.textContent = S.stale ? staleNote() : "";
  }
}

function setStale(on) {
  const was = S.stale;
  S.stale = on;
  renderStale(); renderZones();
  if (on !== was) { // said to screen readers too: going stale, and live again
    announce(on ? staleNote() : t("live_again"));
    S.spoken = new Map(S.zones.map((z) => [z.zone, freeSaid(z)])); // counts told from here on
  }
}

// Said by screen readers (a polite live region): the page going stale or live again, and at
// most every 30 s the zones' free counts that changed.
function announce(text) {
  $("#announce").textContent = text;
}
const ANNOUNCE_EVERY_MS = 30000;
// a zone's free count as the page shows it ("--": too much of it unknown to count)
const freeSaid = (z) => { const { blind, offered } = zoneShown(z); return blind ? "--" : String(offered); };
function announceZones() {
  if (S.stale) return;
  if (!S.spoken) S.spoken = new Map();
  const changed = S.zones.filter((z) => S.spoken.get(z.zone) !== freeSaid(z));
  for (const z of changed) S.spoken.set(z.zone, freeSaid(z));
  if (changed.length)
    announce(t("free_now").replace("{list}", changed.map((z) => `${L(z.name)} ${freeSaid(z) === "--" ? t("unknown") : freeSaid(z)}`).join(listSep())));
}

// The stream failed (or could not connect): if it is not back within STALE_AFTER_MS, stop
// presenting the last snapshot as live. The first failure starts the clock; retries don't.
function streamDown() {
  renderLive(false);
  if (S.downSince != null) return;
  S.downSince = Date.now() / 1000;
  later("stale", () => setStale(true), STALE_AFTER_MS);
}

// The stream is (back) up: live again once a whole fresh snapshot is in, not before.
async function resync(es) {
  const ok = await reloadSnapshot();
  if (S.es !== es || es.readyState !== EventSource.OPEN) return; // dropped again meanwhile
  if (!ok) return later("resync", () => resync(es), 2000);
  clearTimeout(S.timers.stale);
  S.downSince = null;
  if (S.stale) setStale(false);
}

const STREAM_URL = "/api/v1/stream";
// Waits after a refusal at a stream cap: the server's Retry-After, within these bounds.
const REFUSED_WAIT_MS = [5000, 120000];
const REFUSED_WAIT_DEFAULT_MS = 30000;

// Why the stream was refused: EventSource never shows the answer, so ask once ourselves, as a
// probe: the server answers the refusal a stream would get now (204: none) without opening one
// or counting the refusal again. { status (0: unreachable), waitMs: its Retry-After, bounded }
async function streamRefusal() {
  try {
    const r = await fetch(`${STREAM_URL}?probe=true`, { cache: "no-store" });
    const after = r.headers.get("Retry-After");
    // seconds, or an HTTP date
    let ms = after == null ? NaN : /^\s*\d+\s*$/.test(after) ? Number(after) * 1000 : Date.parse(after) - Date.now();
    if (!Number.isFinite(ms)) ms = REFUSED_WAIT_DEFAULT_MS;
    return { status: r.status, waitMs: Math.min(REFUSED_WAIT_MS[1], Math.max(REFUSED_WAIT_MS[0], ms)) };
  } catch {
    return { status: 0, waitMs: 0 };
  }
}

// The server refused the stream (EventSource gives up on any answer but 200): at a stream cap
// (429, 503) say so and wait its Retry-After, then open the stream again, nothing more; else
// (a 401 may mean our login ended) start again in 2 s, asking who we are first.
async function streamRefused(es) {
  const { status, waitMs } = await streamRefusal();
  if (S.es !== es) return;
  if (status === 429 || status === 503) {
    S.refused = { status, retryAt: Date.now() + waitMs };
    tickRefused();
    later("reconnect", () => { if (S.es === es) connect(); }, waitMs);
  } else {
    if (S.refused) { S.refused = null; renderLive(false); renderStale(); }
    later("reconnect", () => { if (S.es === es) start(); }, 2000);
  }
}

function connect() {
  if (S.es) S.es.close();
  // a retry still waiting (an old stream's) would keep this one's from being set
  clearTimeout(S.timers.reconnect); S.timers.reconnect = null;
  const es = new EventSource(STREAM_URL);
  S.es = es;
  es.addEventListener("hello", async () => {
    if (S.refused) { S.refused = null; renderStale(); }
    renderLive(true);
    // the server ends a logged-in stream when its login ends (logout elsewhere, expiry, user
    // removed or demoted): ask who we are now before loading what we may see
    await loadSession();
    if (S.es === es) resync(es);
  });
  es.addEventListener("space", (m) => onSpace(JSON.parse(m.data).data));
  es.addEventListener("zone", (m) => onZone(JSON.parse(m.data).data));
  es.addEventListener("display", (m) => onDisplay(JSON.parse(m.data).data));
  es.addEventListener("alert", () => later("alerts", loadAlerts, 300));
  // a zone closed, opened or given a new reason (here or on another page): who and why
  es.addEventListener("closure", () => {
    if (S.me) throttle("closures", async () => { await loadClosures(); renderZones(); }, 1000);
  });
  // agents report health every few seconds each: many agents never leave a quiet second
  es.addEventListener("agent", () => {
    throttle("agents", () => { loadAgents(); loadAlerts(); }, 1000);
    // the detector table is large on a big site (~1 MB at 8,000 spaces): every 5 s at most
    throttle("detectors", loadDetectors, 5000);
  });
  // the gateway gone (or back): spaces and sign pictures reload (blank while it is away)
  es.addEventListener("gateway", () => { later("spaces", loadMap, 300); later("signs", loadSigns, 300); });
  es.onerror = () => {
    streamDown();
    // EventSource retries by itself unless the server refused: then we learn why and retry
    if (es.readyState === EventSource.CLOSED) streamRefused(es);
  };
}

// Resolves to whether every live part loaded (a loader answers false when its call failed).
async function reloadSnapshot() {
  const loads = [loadZones(), loadSigns()];
  if (S.me) loads.push(loadMap(), loadAlerts(), loadAgents(), loadDetectors(), loadHistory(), loadEvents(true));
  return (await Promise.all(loads)).every((ok) => ok !== false);
}

// Resolves to whether the server answered who we are.
async function start() {
  const answered = await loadSession();
  if (!S.me && !S.publicRead) { S.zones = []; S.displays = []; renderZones(); renderSigns(); }
  connect();
  return answered;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#lang").onclick = () => { S.lang = S.lang === "zh" ? "en" : "zh"; localStorage.setItem("lang", S.lang); applyLang(); };
  $("#login").addEventListener("submit", login);
  $("#logout").onclick = logout;
  $("#sp-close").onclick = () => controlSpace("close");
  $("#sp-open").onclick = () => controlSpace("open");
  $("#zn-close").onclick = () => controlZone("close");
  $("#zn-open").onclick = () => controlZone("open");
  $("#zn-cancel").onclick = () => { $("#zone-panel").hidden = true; S.zoneSelected = null; };
  $("#older").onclick = () => loadEvents(false);
  $("#event-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadEvents(true); });
  $("#event-filter").addEventListener("change", () => { $("#csv").href = `/api/v1/events.csv?${eventQuery()}`; });
  $("#space-find").addEventListener("submit", findSpace);
  // Escape in a space's panel: back to that space on the map
  $("#space-panel").addEventListener("keydown", (ev) => {
    const p = ev.key === "Escape" && S.selected && polygons.get(S.selected);
    if (p) p.focus();
  });
  for (const b of document.querySelectorAll("[data-range]"))
    b.onclick = () => {
      S.range = Number(b.dataset.range);
      for (const x of document.querySelectorAll("[data-range]")) x.setAttribute("aria-pressed", String(x === b));
      loadHistory();
    };
  // a phone turned, a window resized: the chart drawn again for its new width (its text size)
  window.addEventListener("resize", () => later("chart-width", () => {
    const shown = $("#chart svg");
    if (S.history && shown && Number(shown.dataset.width) !== chartWidth()) drawChart(S.history);
  }, 200));
  setInterval(expireSigns, 5000);
  applyLang();
  start();
});
