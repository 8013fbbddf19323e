"use strict";
(() => {
  // ================================================================ constants
  const PRIO_RANK = { high: 0, medium: 1, low: 2 };
  const PRIO_MARK = { high: "!!!", medium: "!!", low: "!" };
  /** mmol/L = mg/dL ÷ 18.016 (the molar mass of glucose, 180.16 g/mol, the same factor the gateway uses).
   *  Shown: mg/dL as whole numbers, mmol/L to one decimal (round half away from zero), trends one
   *  decimal more (mg/dL/min to 0.1, mmol/L/min to 0.01). */
  const MGDL_PER_MMOL = 18.016;
  const KIND_WORDS = {
    glucose_urgent_low: "Urgent low glucose",
    glucose_urgent_low_soon: "Urgent low glucose forecast",
    glucose_low: "Low glucose",
    glucose_high: "High glucose",
    glucose_falling_fast: "Glucose falling fast",
    glucose_rising_fast: "Glucose rising fast",
    glucose_variability_change: "Glucose variability changed",
    tachycardia_at_rest: "Fast heart rate at rest",
    bradycardia: "Slow heart rate",
    hr_news2_band: "Heart rate in NEWS2 warning band",
    hr_abrupt_change: "Abrupt heart-rate change",
    hr_resting_drift: "Resting heart rate drifting up",
    sensor_stale: "Sensor silent (no data)",
    sensor_flatline: "Sensor stuck (flat signal)",
    value_implausible: "Implausible sensor values",
  };
  const SIGNAL_WORDS = { glucose: "Glucose", heart_rate: "Heart rate", steps: "Steps" };
  const CAUSE_WORDS = {
    onset: "opened", new_episode: "new episode", priority_up: "priority raised", priority_down: "priority lowered",
    reopened: "re-opened", renotify: "reminder", escalated: "escalated to charge nurse", acknowledged: "acknowledged",
    snoozed: "snoozed", snooze_ended: "snooze ended", cleared: "cleared", note: "note added", noted: "note added",
  };
  /** Kinds that can be raised at high priority: their snooze is capped at 5 minutes (alerts/lifecycle.py). */
  const HIGH_CAPABLE = new Set(["glucose_urgent_low", "bradycardia", "tachycardia_at_rest"]);
  const SNOOZE_HIGH = [1, 2, 5];
  const SNOOZE_OTHER = [5, 15, 30, 60, 120];
  const SILENCE_DEFAULT_MIN = 2;       // the account may choose 1-10 (preference silence_minutes)
  const silenceMs = () => {
    const m = st.me && Number(st.me.silence_minutes);
    return (m >= 1 && m <= 10 ? m : SILENCE_DEFAULT_MIN) * 60 * 1000;
  };
  const LOST_AFTER_MS = 5000;          // disconnected this long: the "live updates lost" banner
  const TECHNICAL_AFTER_MS = 30000;    // disconnected this long: the technical alarm sounds
  /* The console sends `event: keepalive` after 15 s without any other event: a stream silent for STALL_MS (two
   * keep-alives missed, plus slack) is dead even if its network path looks open, and is reopened at once. So the
   * page notices a stalled stream within STALL_MS + 1 s (the tick) and reconnects within ~1.2 s more (backoff). */
  const STALL_MS = 35000;
  const CONFIRM_WAIT_MS = 30000;       // a sent command not confirmed by the stream this long: say so
  const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
  const LOCK_POLL_MS = 2000;           // the locked screen asks for its wards' alarm state this often

  // ================================================================ state (memory only: nothing is stored in the browser)
  const st = {
    me: null,             // {username, role, wards, units, csrf_token}
    alerts: new Map(),    // alert_id -> alert (live view of the caller's wards)
    seen: new Map(),      // alert_id -> highest priority rank seen (to spot new alarms)
    clockOffset: 0,       // server clock - browser clock
    ui: new Map(),        // alert_id -> {pending: [command...], error, noteOpen, noteText, snooze}
    filters: { ward: "", patient: "", audience: "", group: "" },
    route: { view: "alerts", patient: null },
    patient: null,        // the patient detail body being shown
    patientError: null,
    silenceUntil: 0,
    loggingOut: false,    // our own logout in flight (its session_end on the stream is expected)
    lastActivity: 0,      // when the console last answered a request of this session (sliding idle timeout)
    rangeH: 24,           // hours shown by the patient charts (24, 6 or 1)
    es: null, esTimer: null, attempt: 0, connectedOnce: false, downSince: 0, lastMessage: 0,
    sessionGen: 0,
    // the locked screen (session ended by its idle timeout): the wards' alarm counts, nothing of a patient
    locked: null,         // {role, wards, counts, highest, until_ms} from GET /api/alarm-status
    lockGen: 0, lockPolledAt: 0, lockPolling: false, lockDownSince: 0,
  };
  const now = () => Date.now() + st.clockOffset;
  const $ = (id) => document.getElementById(id);
  const body = document.body;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = String(v);
        else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
        else if (k === "dataset") Object.assign(e.dataset, v);
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // ================================================================ formatting
  const pad2 = (n) => String(n).padStart(2, "0");
  // 24-hour clock on purpose: no AM/PM ambiguity at handover
  function clock(ms) { const d = new Date(ms); return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`; }
  function stamp(ms) {
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock(ms)}:${pad2(d.getSeconds())}`;
  }
  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${pad2(s % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${pad2(m % 60)} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }
  /** A window length in seconds in the largest whole unit that fits: "90 s", "5 min", "2 h", "1 h 30 min". */
  function span(s) {
    s = Math.round(s);
    if (s < 120 && s % 60) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 120 && m % 60) return `${m} min`;
    return m % 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m / 60} h`;
  }
  function mmss(ms) { const s = Math.max(0, Math.ceil(ms / 1000)); return `${Math.floor(s / 60)}:${pad2(s % 60)}`; }
  const kindWords = (k) => KIND_WORDS[k] || String(k || "alert").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  /** Round half away from zero to `d` decimals, as a string without a trailing "-0". */
  function fixed(v, d) {
    const f = 10 ** d;
    const r = Math.sign(v) * Math.round(Math.abs(v) * f + 1e-9) / f;
    return (Object.is(r, -0) ? 0 : r).toFixed(d);
  }
  /** A glucose concentration given in `from` units, in `to` units (number). */
  function convertGlucose(v, from, to) {
    if (from === to || !from || !to) return v;
    if (from === "mg/dL" && to === "mmol/L") return v / MGDL_PER_MMOL;
    if (from === "mmol/L" && to === "mg/dL") return v * MGDL_PER_MMOL;
    return v;
  }
  const glucoseDecimals = (units, trend) => (units === "mmol/L" ? 1 : 0) + (trend ? 1 : 0);
  const userUnits = () => (st.me && st.me.units === "mmol/L" ? "mmol/L" : "mg/dL");
  /** A value of `signal` measured in `unit`, formatted in what the user reads (glucose in their units). */
  function fmtValue(signal, v, unit, { trend = false, withUnit = true } = {}) {
    if (typeof v !== "number" || !Number.isFinite(v)) return null;
    if (signal === "glucose") {
      const to = userUnits();
      const x = convertGlucose(v, unit || to, to);
      return fixed(x, glucoseDecimals(to, trend)) + (withUnit ? ` ${to}${trend ? "/min" : ""}` : "");
    }
    const u = unit || (signal === "heart_rate" ? "bpm" : signal === "steps" ? "steps" : "");
    const d = trend ? 1 : (Math.abs(v) >= 100 || Number.isInteger(v) ? 0 : 1);
    return fixed(v, d) + (withUnit && u ? ` ${u}${trend ? "/min" : ""}` : "");
  }
  const sign = (s) => (s.startsWith("-") ? s.replace("-", "−") : `+${s}`);

  // ================================================================ HTTP
  class HttpError extends Error {
    constructor(status, body, retryAfter) {
      super((body && (body.detail || body.error)) || `HTTP ${status}`);
      this.status = status; this.body = body; this.retryAfter = retryAfter;
    }
  }
  async function api(method, path, payload) {
    const headers = { "Accept": "application/json" };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && st.me && st.me.csrf_token) headers["X-CSRF-Token"] = st.me.csrf_token;
    let r;
    try {
      r = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
        body: payload === undefined ? undefined : JSON.stringify(payload) });
    } catch (e) {
      throw new HttpError(0, { detail: "the console did not answer (network)" });
    }
    let data = null;
    if (r.status !== 204) {
      const text = await r.text();
      if (text) { try { data = JSON.parse(text); } catch (e) { data = { detail: text.slice(0, 200) }; } }
    }
    if (r.ok && st.me) st.lastActivity = Date.now();  // every answered request keeps the session alive
    if (!r.ok) {
      const err = new HttpError(r.status, data, Number(r.headers.get("Retry-After")) || 0);
      if (r.status === 401 && path !== "/api/login" && path !== "/api/logout") sessionEnded("Your session has ended. Please log in again.");
      throw err;
    }
    return data;
  }
  function describeError(e) {
    if (!(e instanceof HttpError)) return String(e && e.message || e);
    if (e.status === 0) return "The console did not answer — check the network and try again.";
    if (e.status === 403) return "Refused (403): the page's security token is not valid any more. Reload the page.";
    if (e.status === 404) return "Not found: this alert or patient is no longer open or not in your wards.";
    if (e.status === 409) return "This alert is no longer open.";
    if (e.status === 503) return `Not sent: ${e.message}. Try again.`;
    return e.message;
  }

  // ================================================================ alarm signals (Web Audio, IEC 60601-1-8)
  /* Pulse patterns (times in seconds from the start of a burst), chosen within IEC 60601-1-8 table 3:
   *  HIGH   10 pulses "3 + 2, pause, 3 + 2" at 880 Hz: pulse 150 ms, 100 ms between pulses, 350 ms between
   *         the groups of 3 and 2, 1.0 s between the halves; the burst (3.8 s) starts again every 8 s.
   *  MEDIUM 3 pulses at 660 Hz: pulse 200 ms, 200 ms between pulses; the burst (1.0 s) repeats every 15 s.
   *  LOW    one 250 ms pulse at 440 Hz when a new low-priority clinical alert arrives; no repetition.
   *  TECHNICAL (live updates lost for more than 30 s, and no louder alarm sounding): two 250 ms pulses at
   *         440 Hz every 30 s — the screen may be stale, someone has to look (a low-priority technical alarm).
   * Each pulse has 20 ms linear rise and fall (10-20 % of the pulse) and a fundamental with four
   * harmonics, so the tone stays audible and locatable (the standard asks for ≥ 4 harmonics in 300-4000 Hz).
   * The sound stops at once when no unacknowledged, unsnoozed high/medium alert is left, or while silenced. */
  const PATTERNS = {
    high: { freq: 880, dur: 0.15, at: [0, 0.25, 0.5, 1.0, 1.25, 2.4, 2.65, 2.9, 3.4, 3.65], every: 8000 },
    medium: { freq: 660, dur: 0.2, at: [0, 0.4, 0.8], every: 15000 },
    low: { freq: 440, dur: 0.25, at: [0], every: 0 },
    technical: { freq: 440, dur: 0.25, at: [0, 0.5], every: 30000 },
  };
  const sound = {
    ctx: null, master: null, wave: null, level: "none", timer: null, voices: new Set(), bursts: 0,
    ensure() {
      if (this.ctx) return this.ctx;
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return null;
      try { this.ctx = new AC(); } catch (e) { return null; }
      this.master = this.ctx.createGain();
      this.master.gain.value = 0.5;
      this.master.connect(this.ctx.destination);
      const real = new Float32Array([0, 1, 0.55, 0.4, 0.3, 0.2]);
      this.wave = this.ctx.createPeriodicWave(real, new Float32Array(real.length));
      this.ctx.onstatechange = () => { refreshAlarm(); };
      return this.ctx;
    },
    /** Must run inside a user gesture (click/keypress) unless the browser allows autoplay. */
    unlock() {
      const c = this.ensure();
      if (c && c.state !== "running") c.resume().then(refreshAlarm, () => {});
    },
    running() { return !!this.ctx && this.ctx.state === "running"; },
    pulse(t0, freq, dur) {
      const c = this.ctx;
      const osc = c.createOscillator();
      osc.setPeriodicWave(this.wave);
      osc.frequency.value = freq;
      const g = c.createGain();
      const rise = 0.02;
      g.gain.setValueAtTime(0, t0);
      g.gain.linearRampToValueAtTime(1, t0 + rise);
      g.gain.setValueAtTime(1, t0 + dur - rise);
      g.gain.linearRampToValueAtTime(0, t0 + dur);
      osc.connect(g); g.connect(this.master);
      osc.start(t0); osc.stop(t0 + dur + 0.01);
      const v = { osc, g };
      this.voices.add(v);
      osc.onended = () => { this.voices.delete(v); try { g.disconnect(); } catch (e) { /* already */ } };
    },
    burst(level) {
      if (!this.running()) return;
      const p = PATTERNS[level];
      const t0 = this.ctx.currentTime + 0.05;
      for (const at of p.at) this.pulse(t0 + at, p.freq, p.dur);
      this.bursts += 1;
      body.dataset.bursts = String(this.bursts);
    },
    stopVoices() {
      for (const v of this.voices) { try { v.osc.stop(); } catch (e) { /* not started */ } }
      this.voices.clear();
    },
    /** The repeating alarm for `level` (high/medium), or none. Restarts only when the level changes. */
    play(level) {
      if (level === this.level) return;
      clearTimeout(this.timer); this.timer = null;
      this.stopVoices();
      this.level = level;
      if (!PATTERNS[level] || !PATTERNS[level].every) return;
      const loop = () => {
        if (this.level !== level) return;
        this.burst(level);
        this.timer = setTimeout(loop, PATTERNS[level].every);
      };
      loop();
    },
  };

  /** The alarm condition of the caller's wards: the highest priority among alerts that still need
   *  someone (open/updated: not acknowledged, not snoozed right now). */
  function alarmLevel() {
    let best = 3;
    const t = now();
    for (const a of st.alerts.values()) {
      if (!needsAction(a, t)) continue;
      best = Math.min(best, PRIO_RANK[a.priority] ?? 3);
    }
    return ["high", "medium", "low", "none"][best];
  }
  function needsAction(a, t = now()) {
    return (a.state === "open" || a.state === "updated") && !(a.snoozed_until_ms && a.snoozed_until_ms > t);
  }
  function audioState() {
    if (st.silenceUntil > Date.now()) return "silenced";
    return sound.running() ? "on" : "blocked";
  }
  function refreshAlarm() {
    const loggedIn = !!st.me;
    const locked = !loggedIn && !!st.locked;
    const level = loggedIn ? alarmLevel() : locked ? st.locked.highest : "none";
    if (st.silenceUntil && st.silenceUntil <= Date.now()) st.silenceUntil = 0;  // silence over: sound resumes
    const audio = audioState();
    body.dataset.alarm = level;
    body.dataset.audio = audio;
    body.dataset.audioContext = sound.ctx ? sound.ctx.state : "none";
    // the stream being down long is a technical alarm of its own: the screen may no longer be true
    const technical = loggedIn ? !!st.downSince && Date.now() - st.downSince > TECHNICAL_AFTER_MS
      : locked && !!st.lockDownSince && Date.now() - st.lockDownSince > TECHNICAL_AFTER_MS;
    body.dataset.technical = technical ? "lost" : "none";
    const audible = level === "high" || level === "medium" ? level : technical ? "technical" : "none";
    // admins watch every ward read-only: their screen shows the alarm, only clinical accounts hear it
    // the locked screen sounds for the wards of its last account (a clinical one: admins never hear alarms)
    const hears = loggedIn ? canAct() : locked && st.locked.role !== "admin";
    sound.play(hears && audio === "on" ? audible : "none");
    body.dataset.sounding = sound.level;
    const s = $("audio-state");
    s.dataset.audio = audio;
    s.textContent = audio === "silenced" ? `Silenced ${mmss(st.silenceUntil - Date.now())}`
      : audio === "on" ? "Sound on" : "Sound blocked";
    const b = $("silence");
    b.textContent = audio === "silenced" ? "Resume sound" : `Silence ${silenceMs() / 60000} min`;
    b.setAttribute("aria-pressed", audio === "silenced" ? "true" : "false");
    b.title = audio === "silenced" ? "End the silence: alarms sound again"
      : `Pause the alarm sound for ${silenceMs() / 60000} minutes; alerts stay visible`;
    $("sound-banner").hidden = !(loggedIn || (locked && hears)) || sound.running();
    if (locked) renderLocked(technical);
    document.title = (level === "high" || level === "medium" ? `(${level.toUpperCase()} ALARM) ` : "") + "wearwatch alert console";
  }
  function toggleSilence() {
    sound.unlock();
    st.silenceUntil = st.silenceUntil > Date.now() ? 0 : Date.now() + silenceMs();
    refreshAlarm();
  }

  // ================================================================ notifications (tab hidden, new high/medium alert)
  function askNotificationPermission() {
    if (!("Notification" in window) || Notification.permission !== "default") return;
    try { const p = Notification.requestPermission(); if (p && p.catch) p.catch(() => {}); } catch (e) { /* old API */ }
  }
  function notify(a) {
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    // no patient identifier on the system notification (it can show on a shared screen or lock screen)
    try {
      const n = new Notification(`${a.priority.toUpperCase()} alarm: ${kindWords(a.kind)}`, {
        body: `Ward ${a.ward} — open the wearwatch console`, tag: a.alert_id, requireInteraction: a.priority === "high",
      });
      n.onclick = () => { window.focus(); n.close(); };
    } catch (e) { /* notifications unavailable */ }
  }
  /** Compare incoming alerts with what was seen: a new alert, or one whose priority went up, is news. */
  function noticeNews(list, initial) {
    for (const a of list) {
      const rank = PRIO_RANK[a.priority] ?? 3;
      const prev = st.seen.get(a.alert_id);
      st.seen.set(a.alert_id, prev === undefined ? rank : Math.min(prev, rank));
      if (initial || (prev !== undefined && rank >= prev) || !needsAction(a)) continue;
      if (a.priority === "high" && st.silenceUntil) st.silenceUntil = 0;  // a new high alarm ends the silence
      if (a.priority === "high" || a.priority === "medium") notify(a);
      if (a.priority === "low" && a.audience === "clinical" && audioState() === "on") sound.burst("low");
      announce(`New ${a.priority} priority alert, ward ${a.ward}: ${kindWords(a.kind)}`);
    }
  }
  function announce(text) { const n = $("announcer"); n.textContent = ""; setTimeout(() => { n.textContent = text; }, 50); }

  // ================================================================ live stream (Server-Sent Events)
  function setConn(state, text) {
    const c = $("conn");
    c.dataset.conn = state;
    body.dataset.conn = state;
    $("conn-text").textContent = text;
  }
  function connect() {
    closeStream();
    if (!st.me) return;
    const gen = st.sessionGen;
    setConn(st.connectedOnce ? "reconnecting" : "connecting", st.connectedOnce ? "reconnecting…" : "connecting…");
    const es = new EventSource("/api/events");
    st.es = es;
    const alive = () => { st.lastMessage = Date.now(); };
    es.onopen = () => { alive(); };
    es.addEventListener("snapshot", (ev) => {
      if (gen !== st.sessionGen) return;
      alive();
      let doc;
      try { doc = JSON.parse(ev.data); } catch (e) { return; }
      const first = !st.connectedOnce;
      st.attempt = 0; st.downSince = 0; st.connectedOnce = true;
      setConn("live", "live");
      $("lost-banner").hidden = true;
      applySnapshot(doc, first);  // renders and re-evaluates the alarm with the connection back
    });
    es.addEventListener("patient", (ev) => {
      if (gen !== st.sessionGen) return;
      alive();
      let doc;
      try { doc = JSON.parse(ev.data); } catch (e) { return; }
      applyPatient(doc);
    });
    es.addEventListener("session_end", async (ev) => {
      if (gen !== st.sessionGen) return;
      let reason = "";
      try { reason = JSON.parse(ev.data).reason || ""; } catch (e) { /* no reason given */ }
      closeStream();
      if (reason === "idle") {
        // other requests may have kept the session alive: ask before giving up
        try { await api("GET", "/api/me"); } catch (e) { return; }  // 401 shows the login form
        if (gen === st.sessionGen) connect();
        return;
      }
      if (reason === "logout" && st.loggingOut) return;  // our own logout: its answer finishes it
      sessionEnded(reason === "logout" ? "This session was logged out (on another screen or by an administrator)."
        : reason === "disabled" ? "Your account has been disabled."
        : reason === "idle" ? "Your session ended after a period without activity. Please log in again."
        : "Your session has ended. Please log in again.");
    });
    es.addEventListener("keepalive", () => {
      if (gen !== st.sessionGen) return;
      hasStallSignal = true; alive();
      body.dataset.keepalives = String(Number(body.dataset.keepalives || 0) + 1);
    });
    es.onmessage = alive;
    es.onerror = () => {
      if (gen !== st.sessionGen || st.es !== es) return;
      // our own reconnection (with backoff and a session check) instead of the browser's fixed retry
      closeStream();
      lostConnection();
    };
  }
  function closeStream() {
    if (st.es) { st.es.close(); st.es = null; }
    clearTimeout(st.esTimer); st.esTimer = null;
  }
  async function lostConnection() {
    if (!st.me) return;
    if (!st.downSince) st.downSince = Date.now();
    setConn("reconnecting", "reconnecting…");
    const delay = BACKOFF_MS[Math.min(st.attempt, BACKOFF_MS.length - 1)] * (0.8 + 0.4 * Math.random());
    st.attempt += 1;
    const gen = st.sessionGen;
    st.esTimer = setTimeout(async () => {
      if (gen !== st.sessionGen) return;
      try { await api("GET", "/api/me"); } catch (e) {
        if (e instanceof HttpError && e.status === 401) return;  // sessionEnded() already showed the login form
        if (gen === st.sessionGen) lostConnection();
        return;
      }
      if (gen === st.sessionGen) connect();
    }, delay);
  }
  /* An EventSource cannot see the server's keep-alive comments, so a stream whose network path died without a
   * reset (a sleeping laptop, a switched Wi-Fi, a proxy) could look open for minutes. Every 20 s the page asks
   * GET /healthz (no session, not audited, no activity); no answer within 5 s counts as a lost connection. */
  const PROBE_EVERY_MS = 20000, PROBE_TIMEOUT_MS = 5000;
  let lastProbe = 0, probing = false;
  async function probe() {
    if (probing || !st.es || Date.now() - lastProbe < PROBE_EVERY_MS) return;
    probing = true; lastProbe = Date.now();
    const gen = st.sessionGen, es = st.es;
    let ok = false;
    try {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(), PROBE_TIMEOUT_MS);
      const r = await fetch("/healthz", { cache: "no-store", credentials: "omit", signal: ctl.signal });
      clearTimeout(timer);
      ok = r.ok;
    } catch (e) { ok = false; }
    probing = false;
    if (!ok && gen === st.sessionGen && st.es === es) { closeStream(); lostConnection(); }
  }
  window.addEventListener("offline", () => { if (st.es) { closeStream(); lostConnection(); } });
  window.addEventListener("online", () => {
    if (st.me && !st.es) { clearTimeout(st.esTimer); st.attempt = 0; lostConnection(); }
  });
  function checkStream() {
    if (!st.me) return;
    probe();
    if (st.es && st.es.readyState === EventSource.OPEN && st.connectedOnce && st.lastMessage &&
        Date.now() - st.lastMessage > STALL_MS && $("conn").dataset.conn === "live" && hasStallSignal) {
      closeStream(); lostConnection();
    }
    const down = st.downSince && Date.now() - st.downSince > LOST_AFTER_MS;
    if (down) setConn("lost", `live updates lost ${duration(Date.now() - st.downSince)}`);
    $("lost-banner").hidden = !down;
  }
  // set once the console's named keep-alive events arrive (an older console sent comments, invisible to the page)
  let hasStallSignal = false;

  function sortAlerts(list) {
    return list.sort((a, b) => ((PRIO_RANK[a.priority] ?? 3) - (PRIO_RANK[b.priority] ?? 3)) ||
      ((a.state === "acknowledged") - (b.state === "acknowledged")) ||
      (a.onset_ms - b.onset_ms) || String(a.alert_id).localeCompare(String(b.alert_id)));
  }
  /** The full list (first event of every stream). ``first``: the session's first, whose alerts are not news. */
  function applySnapshot(doc, first) {
    if (typeof doc.server_ms === "number") st.clockOffset = doc.server_ms - Date.now();
    const list = Array.isArray(doc.alerts) ? doc.alerts : [];
    const initial = first && st.seen.size === 0;
    st.alerts = new Map(list.map((a) => [a.alert_id, a]));
    // forget alerts no longer open: one that re-opens later (same id) is news again
    for (const id of [...st.seen.keys()]) if (!st.alerts.has(id)) st.seen.delete(id);
    noticeNews(list, initial);
    settlePending();
    renderAll();
  }
  function applyPatient(doc) {
    const pid = doc.patient_id;
    const list = Array.isArray(doc.alerts) ? doc.alerts : [];
    const still = new Set(list.map((a) => a.alert_id));
    for (const [id, a] of st.alerts) {
      if (a.patient_id !== pid) continue;
      st.alerts.delete(id);
      if (!still.has(id)) st.seen.delete(id);
    }
    for (const a of list) st.alerts.set(a.alert_id, a);
    noticeNews(list, false);
    settlePending();
    renderAll();
    if (st.route.view === "patient" && st.route.patient === pid) schedulePatientReload();
  }
  /** A command is confirmed when the stream shows its effect (the worker applied it). */
  function settlePending() {
    const me = st.me && st.me.username;
    for (const [id, u] of st.ui) {
      if (!u.pending.length) continue;
      const a = st.alerts.get(id);
      if (!a) { u.pending = []; continue; }  // resolved: nothing left to confirm on this page
      u.pending = u.pending.filter((p) => p.phase === "sending" || !confirmed(a, p, me));
    }
  }
  /* Times on the alert are the worker's stream time for that patient (they can lag the wall clock when a
   * device uploads late), so a command is matched by its effect, not by time: a note is confirmed when one
   * more note with its text and author is there than when it was sent; a snooze when the snooze end moved. */
  const myNotes = (a, text, me) => (a.notes || []).filter((n) => n.text === text && n.by === me).length;
  function confirmed(a, p, me) {
    if (p.kind === "ack") return a.state === "acknowledged";
    if (p.kind === "snooze") return (a.snoozed_until_ms || 0) > p.untilBefore && (!a.snoozed_by || a.snoozed_by === me);
    return myNotes(a, p.text, me) > p.notesBefore;
  }

  // ================================================================ actions
  function uiOf(id) {
    let u = st.ui.get(id);
    if (!u) { u = { pending: [], error: null, noteOpen: false, noteText: "", snooze: null }; st.ui.set(id, u); }
    return u;
  }
  async function send(a, kind, path, payload, extra = {}) {
    const u = uiOf(a.alert_id);
    u.error = null;
    const p = { kind, phase: "sending", since: now(), ...extra };
    u.pending.push(p);
    renderAll();
    try {
      await api("POST", path, payload);
      p.phase = "sent"; p.sentAt = Date.now();
      settlePending();
    } catch (e) {
      u.pending = u.pending.filter((x) => x !== p);
      u.error = describeError(e);
    }
    renderAll();
  }
  const acknowledge = (a) => send(a, "ack", `/api/alerts/${encodeURIComponent(a.alert_id)}/ack`, {});
  function snooze(a) {
    const u = uiOf(a.alert_id);
    const minutes = Number(u.snooze || snoozeChoices(a)[0]);
    return send(a, "snooze", `/api/alerts/${encodeURIComponent(a.alert_id)}/snooze`, { minutes },
      { minutes, untilBefore: a.snoozed_until_ms || 0 });
  }
  function addNote(a) {
    const u = uiOf(a.alert_id);
    const text = u.noteText.trim();
    if (!text) { u.error = "Write the note first."; renderAll(); return; }
    if (text.length > 1000) { u.error = "A note holds at most 1000 characters."; renderAll(); return; }
    u.noteOpen = false; u.noteText = "";
    return send(a, "note", `/api/alerts/${encodeURIComponent(a.alert_id)}/notes`, { text },
      { text, notesBefore: myNotes(a, text, st.me && st.me.username) });
  }
  function snoozeChoices(a) {
    if (typeof a.snooze_max_minutes === "number" && a.snooze_max_minutes > 0) {
      const c = [1, 2, 5, 15, 30, 60, 120, 240, 480].filter((m) => m <= a.snooze_max_minutes);
      return c.length ? c : [a.snooze_max_minutes];
    }
    return HIGH_CAPABLE.has(a.kind) || a.priority === "high" ? SNOOZE_HIGH : SNOOZE_OTHER;
  }

  // ================================================================ rendering: alert cards
  function explanationItems(a) {
    const x = a.explanation && typeof a.explanation === "object" ? a.explanation : {};
    const sig = a.signal || x.signal;
    const unit = x.unit || a.unit;
    const items = [];
    const add = (k, v, cls) => { if (v !== null && v !== undefined && v !== "") items.push([k, v, cls]); };
    add("Value", fmtValue(sig, x.value, unit), "ex-value");
    if (a.kind === "glucose_variability_change") {
      // value and baseline are standard deviations; the threshold is a ratio of the two
      add("Usual", fmtValue(sig, x.baseline, unit), "ex-baseline");
      if (typeof x.threshold === "number") add("Limit", `×${fixed(x.threshold, 2)}`, "ex-threshold");
    } else {
      // the rate-of-change kinds have a rate as threshold (per minute), the others a level
      const rate = a.kind === "glucose_falling_fast" || a.kind === "glucose_rising_fast";
      add("Threshold", fmtValue(sig, x.threshold, unit, { trend: rate }), "ex-threshold");
      add(a.kind === "glucose_urgent_low_soon" ? "Forecast" : "Baseline", fmtValue(sig, x.baseline, unit), "ex-baseline");
    }
    if (typeof x.trend_per_min === "number") {
      const tu = typeof x.trend_unit === "string" && x.trend_unit.endsWith("/min") ? x.trend_unit.slice(0, -4) : unit;
      const t = fmtValue(sig, x.trend_per_min, tu, { trend: true });
      add("Trend", t && sign(t), "ex-trend");
    }
    if (typeof x.window_s === "number") add("Window", x.window_s > 0 ? span(x.window_s) : "single reading", "ex-window");
    add("Detected by", x.source === "model" ? "learned model" : x.source === "rule" ? "clinical rule" : x.source, "ex-source");
    if (Array.isArray(x.contributing) && x.contributing.length > 1) {
      add("Signals", x.contributing.map((s) => SIGNAL_WORDS[s] || s).join(", "), "ex-signals");
    }
    return items;
  }

  function stateLine(a, u) {
    const t = now();
    const lines = [];
    if (a.state === "acknowledged") {
      lines.push(el("div", { class: "state-line acked acked-by" },
        `✓ Acknowledged by ${a.acked_by || "?"}${a.acked_ms ? ` at ${clock(a.acked_ms)}` : ""}`));
    }
    if (a.snoozed_until_ms && a.snoozed_until_ms > t) {
      lines.push(el("div", { class: "state-line snoozed snoozed-until" },
        `Snoozed until ${clock(a.snoozed_until_ms)}${a.snoozed_by ? ` by ${a.snoozed_by}` : ""} (`,
        el("span", { class: "tick", dataset: { until: String(a.snoozed_until_ms) } }, mmss(a.snoozed_until_ms - t)), " left)"));
    }
    for (const p of (u && u.pending) || []) {
      const what = p.kind === "ack" ? "Acknowledgement" : p.kind === "snooze" ? `Snooze (${p.minutes} min)` : "Note";
      let text;
      if (p.phase === "sending") text = `Sending ${what.toLowerCase()}…`;
      else if (Date.now() - p.sentAt > CONFIRM_WAIT_MS) text = `${what} sent, not confirmed after ${Math.round((Date.now() - p.sentAt) / 1000)} s — the worker may be behind.`;
      else text = `${what} sent — waiting for confirmation…`;
      lines.push(el("div", { class: "state-line pending", role: "status", dataset: { pending: p.kind } }, text));
    }
    if (u && u.error) lines.push(el("div", { class: "state-line error", role: "alert" }, u.error));
    return lines;
  }

  function alertCard(a) {
    const u = st.ui.get(a.alert_id);
    const t = now();
    const alarming = needsAction(a, t);
    const card = el("article", {
      class: `alert p-${a.priority} aud-${a.audience || "clinical"} ${alarming ? "alarming" : "quiet"}`,
      "aria-label": `${a.priority} priority: ${kindWords(a.kind)}, patient ${a.patient_id}`,
      dataset: { alertId: a.alert_id, state: a.state, kind: a.kind, priority: a.priority, patient: a.patient_id,
                 ward: a.ward, audience: a.audience || "clinical" },
    });
    const age = t - a.onset_ms;
    const who = el("div", { class: "who" },
      el("div", null, el("span", { class: `prio ${a.priority}` }, `${PRIO_MARK[a.priority] || ""} ${String(a.priority).toUpperCase()}`)),
      el("div", { class: "patient" }, el("a", { href: `#/patient/${encodeURIComponent(a.patient_id)}`,
        title: "Patient detail: last 24 hours" }, a.patient_id)),
      el("div", { class: "ward" }, `Ward ${a.ward}`),
      el("div", { class: `age${age > 10 * 60000 && alarming ? " old" : ""}`, dataset: { onset: String(a.onset_ms) } }, duration(age)),
      el("div", { class: "muted nowrap" }, `since ${clock(a.onset_ms)}`));
    const kind = el("h3", { class: "kind" }, kindWords(a.kind));
    if (a.audience === "device") kind.append(el("span", { class: "tag" }, "DEVICE"));
    if (a.escalated || a.route === "charge_nurse") kind.append(el("span", { class: "tag esc" }, "ESCALATED"));
    const items = explanationItems(a);
    const what = el("div", { class: "what" }, kind,
      el("p", { class: "message" }, a.message || ""),
      items.length ? el("dl", { class: "explain" }, items.map(([k, v, cls]) => el("div", { class: cls }, el("dt", null, k), el("dd", null, v)))) : null,
      stateLine(a, u),
      (a.notes && a.notes.length) ? el("ul", { class: "notes", "aria-label": "notes" },
        a.notes.map((n) => el("li", null, el("span", { class: "by" }, `${n.by} ${clock(n.ts_ms)}: `), n.text))) : null);

    const act = el("div", { class: "act" });
    if (!canAct()) {
      act.append(el("div", { class: "muted" }, "Read only: clinical actions belong to clinical accounts."));
      card.append(who, what, act);
      return card;
    }
    const busy = !!u && u.pending.some((p) => p.phase === "sending");
    if (a.state !== "acknowledged") {
      act.append(el("button", { type: "button", class: "primary", dataset: { action: "ack" }, disabled: busy || (!!u && u.pending.some((p) => p.kind === "ack")),
        onclick: (e) => { if (!movedUnderPointer(a, e, "Acknowledge")) acknowledge(a); } }, "Acknowledge"));
    }
    const choices = snoozeChoices(a);
    const ui = uiOf(a.alert_id);
    if (!choices.includes(Number(ui.snooze))) ui.snooze = String(choices[0]);
    const sel = el("select", { "aria-label": "snooze minutes", dataset: { field: "snooze-minutes" },
      onchange: (e) => { ui.snooze = e.target.value; } },
      choices.map((m) => el("option", { value: String(m), selected: String(m) === ui.snooze }, `${m} min`)));
    act.append(el("div", { class: "row" }, sel, el("button", { type: "button", dataset: { action: "snooze" }, disabled: busy,
      onclick: (e) => { if (!movedUnderPointer(a, e, "Snooze")) snooze(a); } }, "Snooze")));
    if (ui.noteOpen) {
      const ta = el("textarea", { maxlength: "1000", "aria-label": "note text", dataset: { field: "note-text" },
        oninput: (e) => { ui.noteText = e.target.value; counter.textContent = `${e.target.value.length}/1000`; },
        onkeydown: (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) addNote(a); if (e.key === "Escape") { ui.noteOpen = false; renderAll(); } } });
      ta.value = ui.noteText;
      const counter = el("span", { class: "counter" }, `${ui.noteText.length}/1000`);
      act.append(el("div", { class: "note-form" }, ta, el("div", { class: "row" },
        el("button", { type: "button", class: "primary", dataset: { action: "note-submit" }, onclick: () => addNote(a) }, "Save note"),
        el("button", { type: "button", dataset: { action: "note-cancel" }, onclick: () => { ui.noteOpen = false; renderAll(); } }, "Cancel"),
        counter)));
    } else {
      act.append(el("button", { type: "button", dataset: { action: "note" }, disabled: busy,
        onclick: () => { ui.noteOpen = true; ui.error = null; renderAll(); focusIn(a.alert_id, "[data-field=note-text]"); } }, "Add note"));
    }
    card.append(who, what, act);
    return card;
  }
  /** Admins see every ward read-only; nurses and charge nurses act on their wards. */
  const canAct = () => !!st.me && st.me.role !== "admin";
  function focusIn(id, sel) {
    const c = document.querySelector(`article.alert[data-alert-id="${CSS.escape(id)}"] ${sel}`);
    if (c) c.focus();
  }

  function visibleAlerts() {
    const f = st.filters;
    return sortAlerts([...st.alerts.values()].filter((a) =>
      (!f.ward || a.ward === f.ward) && (!f.patient || a.patient_id === f.patient) && (!f.audience || (a.audience || "clinical") === f.audience)));
  }
  function renderFilters() {
    const wards = new Set((st.me && st.me.wards) || []);
    for (const a of st.alerts.values()) wards.add(a.ward);
    const patients = new Set([...st.alerts.values()].map((a) => a.patient_id));
    fillSelect($("f-ward"), [...wards].sort(), "All my wards", st.filters.ward, (w) => `Ward ${w}`);
    fillSelect($("f-patient"), [...patients].sort(), "All patients", st.filters.patient, (p) => p);
  }
  function fillSelect(sel, values, allText, current, label) {
    const focused = document.activeElement === sel;
    if (current && !values.includes(current)) values.push(current);
    const want = ["", ...values].join("\u0000");
    if (sel.dataset.values !== want) {
      sel.replaceChildren(el("option", { value: "" }, allText), ...values.map((v) => el("option", { value: v }, label(v))));
      sel.dataset.values = want;
    }
    sel.value = current;
    if (focused) sel.focus();
  }

  /* The list re-sorts and grows as alerts come, are acknowledged and go: a card can move under a pointer
   * aimed at another one, and the press then lands on a different patient's alert. So a pointer press on a
   * card that moved less than MOVED_GUARD_MS before sends nothing and says so on the card (press again). The
   * keyboard needs no guard: the focus stays on its own card across renders. Places are noted after every
   * render, every second (banners move the list too) and when a press goes down. */
  const MOVED_GUARD_MS = 800;
  const cardPlaces = new Map();  // alert id -> [its place in the document, Date.now() when it got there]
  let movedPresses = 0;
  function notePlaces() {
    const t = Date.now();
    const seen = new Set();
    for (const c of document.querySelectorAll("#alert-lists article.alert, #patient-view article.alert")) {
      if (!c.offsetParent) continue;  // in a hidden view
      const r = c.getBoundingClientRect();
      const place = `${Math.round(r.left + window.scrollX)},${Math.round(r.top + window.scrollY)}`;
      const id = c.dataset.alertId;
      const was = cardPlaces.get(id);
      if (!was || was[0] !== place) cardPlaces.set(id, [place, t]);
      c.dataset.placedMs = String(cardPlaces.get(id)[1]);  // when it got where it is (the browser test reads it)
      seen.add(id);
    }
    for (const id of [...cardPlaces.keys()]) if (!seen.has(id)) cardPlaces.delete(id);
  }
  /** True (and the card says why) when a pointer ``e`` pressed a control of alert ``a``'s card just after the
   *  card moved: nothing is sent. A click from the keyboard has ``detail`` 0 and is never refused. */
  function movedUnderPointer(a, e, what) {
    if (!e || !e.detail) return false;
    const p = cardPlaces.get(a.alert_id);
    if (!p || Date.now() - p[1] >= MOVED_GUARD_MS) return false;
    const u = uiOf(a.alert_id);
    u.error = `This card had just moved when you pressed it: nothing was sent. Press ${what} again for patient ${a.patient_id}.`;
    body.dataset.movedPresses = String(++movedPresses);  // presses refused (the browser test reads it)
    renderAll();
    return true;
  }

  /* A press is a pointer (or the Space key) going down on a control and coming up on the same element, and
   * only then does the browser send the click. The stream re-renders the cards at any time: a render between
   * the two replaced the button, and the press did nothing while the nurse saw the card still waiting. So
   * while a press is held on a control of the alert list or the patient view, their renders wait and run
   * once it is released (after its click). The alarm and the counts are not held. A press held longer than
   * PRESS_HOLD_MS (a pointer released outside the window) stops holding the renders back. */
  const PRESS_HOLD_MS = 3000;
  const press = { since: 0, deferred: false, held: 0 };
  const pressable = (t) => t && t.closest && t.closest("#alert-lists, #patient-view") &&
    t.closest("button, a, select, input, textarea, label, summary");
  const pressing = () => press.since > 0 && Date.now() - press.since < PRESS_HOLD_MS;
  function releasePress() {
    if (!press.since) return;
    press.since = 0;
    body.dataset.press = "";
    // after this release's click (dispatched in the same task): a click that renders has rendered already
    if (press.deferred) setTimeout(() => { if (press.deferred && !pressing()) { press.deferred = false; renderAll(); } }, 0);
  }
  function holdPress() { notePlaces(); press.since = Date.now(); body.dataset.press = "held"; }
  document.addEventListener("pointerdown", (e) => { if (pressable(e.target)) holdPress(); }, true);
  document.addEventListener("keydown", (e) => { if (e.key === " " && !e.repeat && pressable(e.target)) holdPress(); }, true);
  for (const type of ["pointerup", "pointercancel", "keyup"]) document.addEventListener(type, releasePress, true);
  window.addEventListener("blur", releasePress);

  /** Run ``render`` keeping the focus (and caret) on the same control of the same alert card: the stream
   *  re-renders at any time, also while a nurse types a note or moves through the buttons with the keyboard.
   *  While a press is held (see ``press``) the render waits for its release. */
  function keepingFocus(render) {
    if (pressing()) {
      press.deferred = true;
      body.dataset.heldRenders = String(++press.held);  // renders held back for a press (the browser test reads it)
      return;
    }
    press.deferred = false;
    try { keepFocus(render); } finally { notePlaces(); }
  }
  function keepFocus(render) {
    const active = document.activeElement;
    const card = active && active.closest ? active.closest("article.alert") : null;
    const keep = card ? { id: card.dataset.alertId, action: active.dataset.action, field: active.dataset.field,
                          caret: active.selectionStart } : null;
    render();
    if (!keep) return;
    const sel = keep.action ? `[data-action="${keep.action}"]` : keep.field ? `[data-field="${keep.field}"]` : null;
    const target = sel && document.querySelector(`article.alert[data-alert-id="${CSS.escape(keep.id)}"] ${sel}`);
    if (!target) return;
    target.focus();
    if (keep.caret !== null && keep.caret !== undefined && target.setSelectionRange) {
      try { target.setSelectionRange(keep.caret, keep.caret); } catch (e) { /* not a text field */ }
    }
  }
  function renderAlerts() { keepingFocus(renderAlertList); }
  function renderAlertList() {
    renderFilters();
    const box = $("alert-lists");
    box.replaceChildren();
    const list = visibleAlerts();
    const clinical = list.filter((a) => (a.audience || "clinical") !== "device");
    const device = list.filter((a) => a.audience === "device");
    const section = (title, items, cls) => {
      if (!items.length) return null;
      const s = el("section", { class: cls, "aria-label": title });
      if (title) s.append(el("h2", { class: "section-title" }, `${title} (${items.length})`));
      const g = st.filters.group;
      if (!g) { s.append(el("div", { class: "alerts" }, items.map(alertCard))); return s; }
      const groups = new Map();
      for (const a of items) {
        const key = g === "ward" ? a.ward : a.patient_id;
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(a);
      }
      for (const [key, gi] of groups) {
        s.append(el("h3", { class: "group-title" }, g === "ward" ? `Ward ${key}` : `Patient ${key}${gi[0] ? ` · ward ${gi[0].ward}` : ""}`),
                 el("div", { class: "alerts" }, gi.map(alertCard)));
      }
      return s;
    };
    if (!list.length) {
      box.append(el("div", { class: "empty", id: "no-alerts" }, st.alerts.size ? "No open alerts match the filters." :
        (st.connectedOnce ? "No open alerts in your wards." : "Loading alerts…")));
    } else {
      const c = section(device.length ? "Patients" : "", clinical, "clinical-alerts");
      const d = section("Devices and sensors (for technicians)", device, "device-alerts");
      if (c) box.append(c);
      if (d) box.append(d);
    }
  }
  function renderSummary() {
    const counts = { high: 0, medium: 0, low: 0 };
    for (const a of st.alerts.values()) if (needsAction(a)) counts[a.priority] = (counts[a.priority] || 0) + 1;
    $("alarm-summary").replaceChildren(...["high", "medium", "low"].map((p) =>
      el("span", { class: `count ${p}${counts[p] ? " on" : ""}`, dataset: { priority: p, count: String(counts[p]) } },
        `${counts[p]} ${p}`)));
  }
  function renderHeader() {
    const me = st.me;
    $("user").replaceChildren(...(me ? [el("b", null, me.username), el("br"),
      `${me.role.replace("_", " ")} · ${me.role === "admin" ? "all wards, read only" : me.wards && me.wards.length ?
        `ward${me.wards.length > 1 ? "s" : ""} ${me.wards.join(", ")}` : "no wards"}`] : []));
    for (const b of document.querySelectorAll(".units-box button")) b.setAttribute("aria-pressed", String(!!me && b.dataset.units === userUnits()));
    $("audit-link").hidden = !(me && me.role === "admin");
  }
  function renderAll() {
    if (!st.me) return;
    renderSummary();
    if (st.route.view === "alerts") renderAlerts();
    else if (st.route.view === "patient") renderPatient();
    refreshAlarm();
  }

  /** Once a second: ages, countdowns, alarm state (a snooze can run out), stream health. */
  function tick() {
    const t = now();
    for (const n of document.querySelectorAll(".age[data-onset]")) n.textContent = duration(t - Number(n.dataset.onset));
    for (const n of document.querySelectorAll(".tick[data-until]")) n.textContent = mmss(Number(n.dataset.until) - t);
    let rerender = false;
    for (const a of st.alerts.values()) if (a.snoozed_until_ms && a.snoozed_until_ms <= t && a.snoozed_until_ms > t - 1500) rerender = true;
    for (const u of st.ui.values()) {
      for (const p of u.pending) if (p.phase === "sent" && !p.late && Date.now() - p.sentAt > CONFIRM_WAIT_MS) { p.late = true; rerender = true; }
    }
    if (press.since && !pressing()) releasePress();  // held past its bound: the renders it held run now
    notePlaces();
    if (rerender) renderAll(); else { renderSummary(); refreshAlarm(); }
    checkStream();
    checkSessionEnd();
    pollLocked();
  }
  /** Warn before the session ends (idle timeout or maximum length): alarms stop with it. */
  function checkSessionEnd() {
    const banner = $("idle-banner");
    const me = st.me;
    if (!me) { banner.hidden = true; return; }
    const idleLeft = me.idle_timeout_s && st.lastActivity ? st.lastActivity + me.idle_timeout_s * 1000 - Date.now() : Infinity;
    const maxLeft = me.expires_ms ? me.expires_ms - now() : Infinity;
    const left = Math.min(idleLeft, maxLeft);
    if (!(left < 120000)) { banner.hidden = true; return; }
    $("idle-text").textContent = idleLeft <= maxLeft
      ? `No activity: this screen locks in ${mmss(left)} (patient details hidden; alarms stay on).`
      : `This session reaches its maximum length in ${mmss(left)}: log in again to keep alarms on this screen.`;
    $("stay").hidden = !(idleLeft <= maxLeft);
    banner.hidden = false;
  }

  // ================================================================ patient detail
  let patientTimer = null;
  function schedulePatientReload() { clearTimeout(patientTimer); patientTimer = setTimeout(() => loadPatient(true), 1500); }
  /** ``refresh``: the detail already open is fetched again (its alerts changed, the minute passed, the units
   *  changed): the console audits a patient view when the nurse opens it, not on each refresh. */
  async function loadPatient(refresh = false) {
    const pid = st.route.patient;
    if (!pid || !st.me) return;
    try {
      const doc = await api("GET", `/api/patients/${encodeURIComponent(pid)}${refresh ? "?refresh=1" : ""}`);
      if (st.route.patient === pid) { st.patient = doc; st.patientError = null; }
    } catch (e) {
      if (st.route.patient === pid) { st.patientError = describeError(e); }
    }
    if (st.route.view === "patient" && st.route.patient === pid) renderPatient();
  }
  function renderPatient() { keepingFocus(renderPatientView); }
  function renderPatientView() {
    const view = $("patient-view");
    const pid = st.route.patient;
    const d = st.patient && st.patient.patient_id === pid ? st.patient : null;
    const open = sortAlerts([...st.alerts.values()].filter((a) => a.patient_id === pid));
    const ward = (d && d.ward) || (open[0] && open[0].ward) || "";
    view.replaceChildren(
      el("p", null, el("a", { href: "#/", id: "back" }, "← All alerts")),
      el("div", { class: "detail-head" }, el("h2", { id: "patient-title" }, `Patient ${pid}`), ward ? el("span", { class: "ward" }, `Ward ${ward}`) : null,
        el("span", { class: "spacer" }), unitsControl()),
      el("h3", { class: "section-title" }, `Open alerts (${open.length})`),
      open.length ? el("div", { class: "alerts" }, open.map(alertCard)) : el("div", { class: "empty" }, "No open alerts for this patient."),
      el("div", { class: "range-head" },
        el("h3", { class: "section-title" }, `Last ${st.rangeH} hour${st.rangeH > 1 ? "s" : ""} (1-minute mean, min–max band, alert markers)`),
        el("span", { class: "units-box range-box", role: "group", "aria-label": "time range" }, [24, 6, 1].map((h) =>
          el("button", { type: "button", dataset: { hours: String(h) }, "aria-pressed": String(st.rangeH === h),
            onclick: () => { st.rangeH = h; renderPatient(); } }, `${h} h`)))),
      st.patientError ? el("div", { class: "state-line error", role: "alert" }, st.patientError)
        : !d ? el("div", { class: "muted" }, "Loading…") : charts(d),
      el("h3", { class: "section-title" }, "Alert history (newest first)"),
      d ? history(d) : null);
  }
  function seriesUnit(sig, d) {
    if (sig === "glucose") return d.units === "mmol/L" ? "mmol/L" : d.units === "mg/dL" ? "mg/dL" : userUnits();
    return sig === "heart_rate" ? "bpm" : "steps/min";
  }
  function charts(d) {
    const series = d.series || {};
    const t1 = now(), t0 = t1 - st.rangeH * 3600 * 1000;
    const box = el("div", { class: "charts", dataset: { hours: String(st.rangeH) } });
    for (const sig of ["heart_rate", "glucose", "steps"]) {
      const pts = Array.isArray(series[sig]) ? series[sig] : [];
      const srcUnit = seriesUnit(sig, d);
      const shownUnit = sig === "glucose" ? userUnits() : srcUnit;
      const conv = (v) => (typeof v === "number" ? (sig === "glucose" ? convertGlucose(v, srcUnit, shownUnit) : v) : null);
      const data = pts.map((p) => ({ t: p.t_ms, mean: conv(p.mean), min: conv(p.min ?? p.mean), max: conv(p.max ?? p.mean) }))
        .filter((p) => typeof p.t === "number" && p.mean !== null && p.t >= t0).sort((p, q) => p.t - q.t);
      const markers = (d.markers || []).filter((m) => !m.signal || m.signal === sig || markerSignal(m.kind) === sig);
      box.append(chart(sig, shownUnit, data, markers, t0, t1));
    }
    return box;
  }
  function markerSignal(kind) {
    if (/^glucose/.test(kind)) return "glucose";
    if (/^(hr_|tachy|brady)/.test(kind)) return "heart_rate";
    return null;
  }
  function niceTicks(lo, hi, n) {
    const span = hi - lo, raw = span / n, mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(6));
    return { ticks: out, step };
  }
  function chart(sig, unit, data, markers, t0, t1) {
    const W = 1000, H = 190, L = 56, R = 12, T = 12, B = 24;
    const ns = "http://www.w3.org/2000/svg";
    const wrap = el("div", { class: "chart", dataset: { signal: sig, points: String(data.length) } });
    const latest = data.length ? data[data.length - 1] : null;
    const dec = sig === "glucose" ? glucoseDecimals(unit, false) : 0;
    wrap.append(el("h3", null, `${SIGNAL_WORDS[sig]} (${unit})`,
      latest ? el("span", { class: "muted latest" },
        `latest minute ${clock(latest.t)}: `, el("b", { class: "latest-value" }, `${fixed(latest.mean, dec)} ${unit}`)) : null));
    if (!data.length) { wrap.append(el("div", { class: "muted" }, `No data in the last ${st.rangeH} hour${st.rangeH > 1 ? "s" : ""}.`)); return wrap; }
    let lo = Math.min(...data.map((p) => p.min)), hi = Math.max(...data.map((p) => p.max));
    if (sig === "steps") lo = 0;
    if (hi - lo < 1e-9) { hi += 1; lo -= sig === "steps" ? 0 : 1; }
    const padv = (hi - lo) * 0.08; hi += padv; if (sig !== "steps") lo -= padv;
    const { ticks } = niceTicks(lo, hi, 5);
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", `${SIGNAL_WORDS[sig]} over the last 24 hours in ${unit}, ${data.length} minutes of data`);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#0c131b", stroke: "#2e4052" });
    for (const v of ticks) {
      if (v < lo || v > hi) continue;
      add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#22313f" });
      add("text", { x: L - 6, y: y(v) + 5, "text-anchor": "end", "font-size": 14, fill: "#a9b8c6" }, fixed(v, sig === "glucose" && unit === "mmol/L" ? 1 : 0));
    }
    // time ticks on whole local hours (or 10 minutes for the shortest range)
    const step = { 24: 3 * 3600000, 6: 3600000, 1: 600000 }[st.rangeH] || 3 * 3600000;
    const off = new Date(t0).getTimezoneOffset() * 60000;
    for (let t = Math.ceil((t0 - off) / step) * step + off; t <= t1; t += step) {
      add("line", { x1: x(t), x2: x(t), y1: T, y2: H - B, stroke: "#22313f" });
      if (x(t) > L + 20 && x(t) < W - R - 20) add("text", { x: x(t), y: H - 6, "text-anchor": "middle", "font-size": 14, fill: "#a9b8c6" }, clock(t));
    }
    // split where minutes are missing (more than 5 min apart): no line drawn across a gap in the data
    const runs = [];
    let run = [];
    for (const p of data) {
      if (run.length && p.t - run[run.length - 1].t > 5 * 60000) { runs.push(run); run = []; }
      run.push(p);
    }
    if (run.length) runs.push(run);
    const colour = sig === "glucose" ? "#ffca28" : sig === "heart_rate" ? "#ef5350" : "#66bb6a";
    for (const r of runs) {
      const band = r.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.max).toFixed(1)}`).join("") +
        r.slice().reverse().map((p) => `L${x(p.t).toFixed(1)},${y(p.min).toFixed(1)}`).join("") + "Z";
      add("path", { d: band, fill: colour, "fill-opacity": 0.22, stroke: "none", class: "band" });
      if (r.length === 1) add("circle", { cx: x(r[0].t), cy: y(r[0].mean), r: 3, fill: colour, class: "mean" });
      else add("path", { d: r.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.mean).toFixed(1)}`).join(""),
        fill: "none", stroke: colour, "stroke-width": 2, class: "mean", "vector-effect": "non-scaling-stroke" });
    }
    const mcol = { high: "#e53935", medium: "#ffb300", low: "#26c6da" };
    for (const m of markers) {
      if (typeof m.t_ms !== "number" || m.t_ms < t0 || m.t_ms > t1) continue;
      const g = add("g", { class: `marker p-${m.priority}` });
      const ln = document.createElementNS(ns, "line");
      for (const [k, v] of Object.entries({ x1: x(m.t_ms), x2: x(m.t_ms), y1: T, y2: H - B, stroke: mcol[m.priority] || "#fff",
        "stroke-width": 2, "stroke-dasharray": m.state === "open" ? "" : "5 4", "vector-effect": "non-scaling-stroke" })) ln.setAttribute(k, v);
      const tri = document.createElementNS(ns, "path");
      tri.setAttribute("d", `M${x(m.t_ms) - 7},${T} L${x(m.t_ms) + 7},${T} L${x(m.t_ms)},${T + 10}Z`);
      tri.setAttribute("fill", mcol[m.priority] || "#fff");
      const title = document.createElementNS(ns, "title");
      title.textContent = `${clock(m.t_ms)} ${kindWords(m.kind)} (${m.priority}, ${m.state})`;
      g.append(ln, tri, title);
    }
    wrap.append(svg, el("div", { class: "legend" },
      el("span", null, el("i", { class: `sw sw-${sig}` }), "1-minute mean"),
      el("span", null, el("i", { class: `sw sw-${sig} sw-band` }), "min–max"),
      el("span", null, el("i", { class: "sw sw-marker" }), "alert marker (dashed: acknowledged/resolved)")));
    return wrap;
  }
  function history(d) {
    const list = Array.isArray(d.alerts) ? d.alerts : [];
    if (!list.length) return el("div", { class: "muted", id: "history-empty" }, "No alerts in the last 24 hours.");
    const rows = list.map((h) => {
      const t = h.updated_ms || h.emitted_ms || h.ts_ms || h.onset_ms;
      const notes = Array.isArray(h.notes) ? h.notes : [];
      const who = [];
      if (h.cause === "acknowledged" || (h.state === "acknowledged" && !h.cause)) {
        who.push(el("div", { class: "acked-by" }, `acknowledged by ${h.acked_by || "?"}${h.acked_ms ? ` at ${clock(h.acked_ms)}` : ""}`));
      } else if (h.cause === "snoozed") {
        who.push(el("div", null, `snoozed by ${h.snoozed_by || "?"}${h.snoozed_until_ms ? ` until ${clock(h.snoozed_until_ms)}` : ""}`));
      } else if (h.cause === "note" && notes.length) {
        const n = notes[notes.length - 1];  // the note this event added (notes are oldest first)
        who.push(el("div", { class: "note" }, el("span", { class: "by" }, `note by ${n.by} ${clock(n.ts_ms)}: `), n.text));
      } else if (h.state === "acknowledged" && h.acked_by) {
        who.push(el("div", { class: "muted" }, `(acknowledged by ${h.acked_by})`));
      }
      return el("tr", { class: `hist p-${h.priority}`, dataset: { alertId: h.alert_id || "", state: h.state || "", cause: h.cause || "" } },
        el("td", { class: "nowrap" }, t ? stamp(t) : ""),
        el("td", null, el("span", { class: `prio small ${h.priority}` }, String(h.priority || "").toUpperCase())),
        el("td", null, el("b", null, kindWords(h.kind)), el("br"), h.message || ""),
        el("td", null, h.state || "", h.cause ? el("div", { class: "muted" }, CAUSE_WORDS[h.cause] || h.cause) : null),
        el("td", null, who));
    });
    return el("table", { class: "data", id: "history" },
      el("thead", null, el("tr", null, ["Time", "Priority", "Alert", "State", "Who / notes"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", null, rows));
  }

  // ================================================================ audit (admins)
  function renderAudit() {
    const view = $("audit-view");
    if (!st.me || st.me.role !== "admin") {
      view.replaceChildren(el("p", null, el("a", { href: "#/" }, "← All alerts")), el("div", { class: "empty" }, "The audit trail is for administrators."));
      return;
    }
    const f = el("form", { class: "audit-form", id: "audit-form" },
      el("label", null, "User", el("input", { name: "user", maxlength: "64", autocomplete: "off" })),
      el("label", null, "Patient", el("input", { name: "patient", maxlength: "64", autocomplete: "off" })),
      el("label", null, "From", el("input", { name: "since", type: "datetime-local" })),
      el("label", null, "Until", el("input", { name: "until", type: "datetime-local" })),
      el("label", null, "At most", el("select", { name: "limit" }, [100, 500, 1000].map((n) => el("option", { value: String(n) }, String(n))))),
      el("button", { type: "submit", class: "primary" }, "Show"));
    const out = el("div", { id: "audit-results" }, el("div", { class: "muted" }, "Loading…"));
    f.addEventListener("submit", (e) => { e.preventDefault(); loadAudit(f, out); });
    view.replaceChildren(el("p", null, el("a", { href: "#/" }, "← All alerts")), el("h2", null, "Audit trail"), f, out);
    loadAudit(f, out);
  }
  /** An audit record's detail object as "key: value" pairs (outcome, units, minutes, role, wards…). */
  function detailText(d) {
    if (d === null || d === undefined) return "";
    if (typeof d !== "object") return String(d);
    return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`).join(", ");
  }
  async function loadAudit(form, out) {
    const q = new URLSearchParams();
    const v = (n) => form.elements[n].value.trim();
    if (v("user")) q.set("user", v("user"));
    if (v("patient")) q.set("patient", v("patient"));
    if (v("since")) q.set("since_ms", String(new Date(v("since")).getTime()));
    if (v("until")) q.set("until_ms", String(new Date(v("until")).getTime()));
    q.set("limit", v("limit") || "100");
    out.replaceChildren(el("div", { class: "muted" }, "Loading…"));
    try {
      const doc = await api("GET", `/api/audit?${q}`);
      const recs = (doc && doc.records) || [];
      out.replaceChildren(el("div", { class: "muted" }, `${recs.length} record${recs.length === 1 ? "" : "s"}, newest first`),
        el("div", { class: "table-wrap" }, el("table", { class: "data", id: "audit-table" },
          el("thead", null, el("tr", null, ["Time", "Who", "Action", "Patient", "Alert", "From", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", null, recs.map((r) => el("tr", { class: "audit-row", dataset: { action: r.action || "" } },
            el("td", { class: "nowrap" }, r.ts_ms ? stamp(r.ts_ms) : ""), el("td", { class: "nowrap" }, r.actor || ""),
            el("td", { class: "nowrap" }, r.action || ""), el("td", { class: "nowrap" }, r.patient_id || ""),
            el("td", { class: "mono" }, r.alert_id || ""), el("td", { class: "nowrap" }, r.address || ""),
            el("td", null, detailText(r.detail))))))));
    } catch (e) {
      out.replaceChildren(el("div", { class: "state-line error", role: "alert" }, describeError(e)));
    }
  }

  // ================================================================ routing (hash only: at most a patient id in the URL)
  function parseRoute() {
    const h = location.hash.replace(/^#\/?/, "");
    const m = /^patient\/(.+)$/.exec(h);
    if (m) { try { return { view: "patient", patient: decodeURIComponent(m[1]) }; } catch (e) { return { view: "alerts", patient: null }; } }
    if (h === "audit") return { view: "audit", patient: null };
    return { view: "alerts", patient: null };
  }
  function route() {
    if (!st.me) return;
    const r = parseRoute();
    const changed = r.view !== st.route.view || r.patient !== st.route.patient;
    st.route = r;
    body.dataset.view = r.view;
    $("alerts-view").hidden = r.view !== "alerts";
    $("patient-view").hidden = r.view !== "patient";
    $("audit-view").hidden = r.view !== "audit";
    if (r.view === "patient") {
      if (changed) { st.patient = null; st.patientError = null; loadPatient(); }
      renderPatient();
    } else {
      // nothing of a patient stays in the page once its view is left (and no hidden copy of its buttons)
      st.patient = null;
      $("patient-view").replaceChildren();
    }
    if (r.view === "audit" && changed) renderAudit();
    if (r.view !== "audit") $("audit-view").replaceChildren();
    if (r.view === "alerts") renderAlerts();
    else $("alert-lists").replaceChildren();
    if (changed) window.scrollTo(0, 0);
  }

  // ================================================================ session
  function showLogin(message) {
    body.dataset.view = "login";
    $("top").hidden = true; $("main").hidden = true; $("sound-banner").hidden = true; $("lost-banner").hidden = true;
    $("login-view").hidden = false;
    $("locked-panel").hidden = true;
    $("login-error").textContent = message || "";
    $("login-password").value = "";
    const u = $("login-username");
    (u.value ? $("login-password") : u).focus();
  }
  function enterConsole(me) {
    leaveLocked();
    st.me = me;
    st.lastActivity = Date.now();
    $("logged-out-warning").hidden = true;
    st.sessionGen += 1;
    st.connectedOnce = false; st.attempt = 0; st.downSince = 0;
    st.seen.clear(); st.alerts.clear(); st.ui.clear();
    body.dataset.view = "alerts";
    $("login-view").hidden = true; $("top").hidden = false; $("main").hidden = false;
    $("error-banner").hidden = true;
    sound.ensure();
    renderHeader();
    st.route = { view: null, patient: null };
    route();
    connect();
    refreshAlarm();
  }
  /** Forget everything of the session (patient data lives only in memory) and show the login form. */
  /** ``expected``: the nurse logged out herself; otherwise (idle, expired, disabled, 401) the screen warns
   *  that it no longer watches anything, with one technical tone if sound was on. */
  function sessionEnded(message, expected = false) {
    if (!st.me) return;
    st.sessionGen += 1;
    closeStream();
    st.me = null;
    forgetPatients();
    if (expected) st.silenceUntil = 0;  // otherwise a running silence ends with its countdown, not with the session
    setConn("idle", "not connected");
    if (location.hash) history_replace();
    $("idle-banner").hidden = true;
    if (expected) {
      sound.play("none");
      refreshAlarm();
      showLogin(message);
      $("logged-out-warning").hidden = true;
      return;
    }
    // a session ended by its idle timeout still reads its wards' alarm state: the screen locks instead
    lockOrLogin(message);
  }
  /** Nothing of a patient stays in the page: alerts, filters, views, the announcer. */
  function forgetPatients() {
    st.alerts.clear(); st.seen.clear(); st.ui.clear(); st.patient = null; st.patientError = null;
    st.filters = { ward: "", patient: "", audience: "", group: "" };
    for (const id of ["f-ward", "f-patient"]) { const sel = $(id); sel.replaceChildren(); delete sel.dataset.values; }
    $("alert-lists").replaceChildren(); $("patient-view").replaceChildren(); $("audit-view").replaceChildren();
    $("alarm-summary").replaceChildren(); $("user").replaceChildren(); $("announcer").textContent = "";
  }

  // ================================================================ the locked screen
  /** Ask for the alarm state with the ended session's cookie: 200 locks the screen, anything else shows the
   *  login form with the warning that this screen watches nothing (and one technical tone). */
  async function lockOrLogin(message) {
    const gen = ++st.lockGen;
    let doc = null;
    try { doc = await alarmStatus(); } catch (e) { doc = null; }
    if (gen !== st.lockGen || st.me) return;
    if (doc) { enterLocked(doc); return; }
    loggedOut(message);
  }
  function loggedOut(message) {
    if (audioState() === "on") sound.burst("technical");
    st.locked = null; st.lockGen += 1; st.lockDownSince = 0;
    st.silenceUntil = 0;
    sound.play("none");
    refreshAlarm();
    showLogin(message);
    $("logged-out-warning").hidden = false;
  }
  /** GET /api/alarm-status: the body, or null for 401 (the session may not watch any more); throws when the
   *  console does not answer (the locked screen then keeps the last counts and says they are stale). */
  async function alarmStatus() {
    let r;
    try {
      r = await fetch("/api/alarm-status", { headers: { "Accept": "application/json" }, credentials: "same-origin",
        cache: "no-store" });
    } catch (e) { throw new HttpError(0, { detail: "the console did not answer (network)" }); }
    if (r.status === 401) return null;
    if (!r.ok) throw new HttpError(r.status, null);
    return r.json();
  }
  function enterLocked(doc) {
    const before = st.locked;
    st.locked = doc; st.lockPolledAt = Date.now(); st.lockDownSince = 0;
    if (!before) {
      sound.ensure();  // (a reloaded locked screen: the first click or key press unlocks the sound)
      showLogin("");
      body.dataset.view = "locked";
      $("logged-out-warning").hidden = true;
      $("locked-panel").hidden = false;
    } else {
      noticeCounts(before.counts, doc.counts);
    }
    refreshAlarm();
  }
  /** More alerts waiting at a priority than at the last poll: a new alarm (it ends a running silence if high). */
  function noticeCounts(before, after) {
    for (const p of ["high", "medium"]) {
      if ((after[p] || 0) <= (before[p] || 0)) continue;
      if (p === "high" && st.silenceUntil) st.silenceUntil = 0;
      announce(`New ${p} priority alarm on the locked screen's wards. Log in to see it.`);
      if (document.hidden && "Notification" in window && Notification.permission === "granted") {
        try { new Notification(`${p.toUpperCase()} alarm — wearwatch console (locked)`, { body: "Log in to see and acknowledge", tag: `locked-${p}`, requireInteraction: p === "high" }); } catch (e) { /* unavailable */ }
      }
    }
  }
  async function pollLocked() {
    if (!st.locked || st.me || st.lockPolling || Date.now() - st.lockPolledAt < LOCK_POLL_MS) return;
    st.lockPolling = true;
    const gen = st.lockGen;
    try {
      const doc = await alarmStatus();
      if (gen !== st.lockGen || st.me) return;
      if (doc) enterLocked(doc);
      else loggedOut("This screen stopped watching the wards: the session reached its maximum length or was ended. Log in to turn alarms back on.");
    } catch (e) {
      if (gen !== st.lockGen || st.me) return;
      st.lockPolledAt = Date.now();
      if (!st.lockDownSince) st.lockDownSince = Date.now();
      refreshAlarm();
    } finally {
      st.lockPolling = false;
    }
  }
  function leaveLocked() {
    st.locked = null; st.lockGen += 1; st.lockDownSince = 0;
    $("locked-panel").hidden = true;
  }
  function renderLocked(technical) {
    const L = st.locked;
    const counts = L.counts || {};
    $("locked-wards").textContent = L.wards ? `Ward${L.wards.length > 1 ? "s" : ""} ${L.wards.join(", ")}` : "All wards (read only: no alarm sound)";
    $("locked-counts").replaceChildren(...["high", "medium", "low"].map((p) =>
      el("span", { class: `count ${p}${counts[p] ? " on" : ""}`, dataset: { priority: p, count: String(counts[p] || 0) } },
        `${counts[p] || 0} ${p}`)));
    const a = $("locked-alarm");
    const stale = !!st.lockDownSince;
    const level = L.highest === "high" || L.highest === "medium" ? L.highest : "none";
    a.dataset.level = stale ? "stale" : level;
    a.textContent = stale ? `ALARM STATE NOT UPDATED for ${duration(Date.now() - st.lockDownSince)} — the console does not answer.${technical ? " Someone has to check this screen." : ""}`
      : level === "none" ? "No unacknowledged high or medium priority alert."
      : `${level.toUpperCase()} PRIORITY ALARM — ${audioState() === "silenced" ? `sound silenced ${mmss(st.silenceUntil - Date.now())}, then it sounds again`
        : audioState() === "on" && L.role !== "admin" ? "sounding" : "not audible on this screen"}. Log in to see and acknowledge.`;
    const left = L.until_ms - (Date.now() + st.clockOffset);
    $("locked-until").textContent = `Patient details are hidden. This screen keeps watching for ${duration(Math.max(0, left))} more (the session's maximum length); log in to keep alarms on after that.`;
  }
  function history_replace() { window.history.replaceState(null, "", location.pathname + location.search); }

  let throttleUntil = 0, throttleTimer = null;
  function throttleCountdown() {
    clearInterval(throttleTimer);
    const upd = () => {
      const left = throttleUntil - Date.now();
      const btn = $("login-submit");
      if (left <= 0) { clearInterval(throttleTimer); btn.disabled = false; $("login-error").textContent = "You can try again now."; return; }
      btn.disabled = true;
      $("login-error").textContent = `Too many failed attempts. Try again in ${mmss(left)}.`;
    };
    upd();
    throttleTimer = setInterval(upd, 500);
  }
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sound.unlock();  // the login click is the user gesture browsers require before sound
    const username = $("login-username").value.trim(), password = $("login-password").value;
    if (!username || !password) { $("login-error").textContent = "Enter your username and password."; return; }
    if (throttleUntil > Date.now()) return;
    const btn = $("login-submit");
    btn.disabled = true; $("login-error").textContent = "Logging in…";
    try {
      const doc = await api("POST", "/api/login", { username, password });
      $("login-password").value = "";
      $("login-error").textContent = "";
      btn.disabled = false;
      const user = doc.user || {};
      enterConsole({ ...user, csrf_token: doc.csrf_token });
      askNotificationPermission();
      // the session's limits (idle timeout, absolute end) come with /api/me
      api("GET", "/api/me").then((me) => { if (st.me && me) st.me = { ...st.me, ...me }; }, () => {});
    } catch (err) {
      btn.disabled = false;
      $("login-password").value = "";
      if (err instanceof HttpError && err.status === 429) {
        throttleUntil = Date.now() + Math.max(1, err.retryAfter || 30) * 1000;
        throttleCountdown();
      } else if (err instanceof HttpError && err.status === 401) {
        $("login-error").textContent = "Wrong username or password, or the account is disabled.";
      } else {
        $("login-error").textContent = describeError(err);
      }
      $("login-password").focus();
    }
  });
  $("logout").addEventListener("click", async () => {
    const btn = $("logout");
    btn.disabled = true;
    st.loggingOut = true;
    try { await api("POST", "/api/logout", {}); } catch (e) {
      if (!(e instanceof HttpError && e.status === 401)) {
        st.loggingOut = false;
        btn.disabled = false;
        showError(`Logout failed: ${describeError(e)}`);
        return;
      }
    }
    btn.disabled = false;
    st.loggingOut = false;
    sessionEnded("You have logged out.", true);
  });
  /** The glucose units switch (alerts view has one in its filter bar; the patient view draws its own). */
  function unitsControl() {
    const mk = (u) => el("button", { type: "button", dataset: { units: u }, "aria-pressed": String(userUnits() === u) }, u);
    return el("div", { class: "units-field" }, el("span", { id: "units-label-p" }, "Glucose in"),
      el("span", { class: "units-box", role: "group", "aria-labelledby": "units-label-p" }, mk("mg/dL"), mk("mmol/L")));
  }
  document.addEventListener("click", async (ev) => {
    const b = ev.target instanceof Element ? ev.target.closest(".units-box button[data-units]") : null;
    if (!b) return;
    {
      const units = b.dataset.units;
      if (!st.me || units === userUnits()) return;
      try {
        const me = await api("PUT", "/api/me/preferences", { units });
        st.me = { ...st.me, ...me, csrf_token: (me && me.csrf_token) || st.me.csrf_token };
        renderHeader();
        // values come from the server in the account's units: fetch everything again in the new ones
        st.connectedOnce = true;
        connect();
        if (st.route.view === "patient") loadPatient(true);
        renderAll();
      } catch (e) { showError(`Units not changed: ${describeError(e)}`); }
    }
  });
  function showError(text) {
    const b = $("error-banner");
    b.textContent = text; b.hidden = false;
    clearTimeout(showError.t);
    showError.t = setTimeout(() => { b.hidden = true; }, 10000);
  }
  $("silence").addEventListener("click", toggleSilence);
  // the skip link moves focus past the header without touching the route (the hash holds the view)
  $("skip").addEventListener("click", (e) => { e.preventDefault(); $("main").focus(); });
  $("stay").addEventListener("click", async () => {
    try { await api("GET", "/api/me"); checkSessionEnd(); } catch (e) { if (!(e instanceof HttpError && e.status === 401)) showError(describeError(e)); }
  });
  $("enable-sound").addEventListener("click", () => { sound.unlock(); });
  // any interaction is a gesture that may unlock audio
  for (const ev of ["pointerdown", "keydown"]) window.addEventListener(ev, () => { if ((st.me || st.locked) && !sound.running()) sound.unlock(); }, true);
  for (const [id, key] of [["f-ward", "ward"], ["f-patient", "patient"], ["f-audience", "audience"], ["f-group", "group"]]) {
    $(id).addEventListener("change", (e) => { st.filters[key] = e.target.value; renderAlerts(); });
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", notePlaces);
  setInterval(tick, 1000);
  setInterval(() => { if (st.route.view === "patient") loadPatient(true); }, 60000);

  async function start() {
    try {
      const me = await api("GET", "/api/me");
      enterConsole(me);
    } catch (e) {
      if (location.hash) history_replace();
      if (!(e instanceof HttpError && e.status === 401)) { showLogin(describeError(e)); return; }
      // a reloaded locked screen: the ended session may still read its wards' alarm state
      let doc = null;
      try { doc = await alarmStatus(); } catch (err) { doc = null; }
      if (doc && !st.me) enterLocked(doc);
      else if (!st.me) showLogin("");
    }
  }
  start();
})();
