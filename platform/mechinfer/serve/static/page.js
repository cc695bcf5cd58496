// The page at "/" of the mechinfer Serve app (mechinfer/serve/page.py): written for this
// project, no library. Everything it shows comes from the public HTTP API:
//   GET  v1/models, v1/limits                  what is served, and the request limits
//   POST v1/models/{model}/infer               {"batch": [...], "refine", "level"}, in chunks
//   POST v1/models/{model}/trajectories        the selected experiment's curves and bands
// Paths are relative to the page's own, so the page also works under a route prefix.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const BASE = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const COLUMNS = ["experiment", "t", "channel", "value"];
  const REFINE = { off: false, on: true, auto: "auto" };
  const IN_FLIGHT = 4; // requests at once
  const DEFAULT_LIMITS = { max_observations: 256, max_batch: 256, max_refine_cases: 16, max_body_bytes: 1048576 };
  const state = { models: {}, limits: DEFAULT_LIMITS, run: null, runId: 0, selected: null, plots: new Map() };
  window.mechinferPage = state; // for tests and the curious

  // ------------------------------------------------------------------ helpers
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function fmt(x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(3);
    return String(Number(x.toPrecision(4)));
  }
  function setStatus(text) {
    $("status").textContent = text;
  }
  class InputError extends Error {}

  // One request to the API; 503 (a full queue, or a replica still starting) is retried after
  // its Retry-After. Throws an Error carrying the API's {"error": ...} message.
  async function call(path, body, tries = 6) {
    const init = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body };
    for (let k = 0; ; k++) {
      let r;
      try {
        r = await fetch(BASE + path, init);
      } catch (e) {
        throw new Error(`no answer from the server (${e.message})`);
      }
      if (r.status === 503 && k + 1 < tries) {
        const wait = Number(r.headers.get("Retry-After")) || 1;
        await sleep(1000 * Math.min(Math.max(wait, 0.2), 10));
        continue;
      }
      const text = await r.text();
      let data = null;
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
      if (!r.ok) {
        const what = data && data.error ? data.error : data && data.detail ? JSON.stringify(data.detail) : text.slice(0, 200);
        const err = new Error(`${r.status}: ${what || r.statusText}`);
        err.status = r.status;
        throw err;
      }
      return data;
    }
  }

  // ------------------------------------------------------------------ models
  async function loadModels() {
    setStatus("Loading the served models…");
    try {
      const [answer, limits] = await Promise.all([call("v1/models"), call("v1/limits").catch(() => null)]);
      if (limits) state.limits = { ...DEFAULT_LIMITS, ...limits };
      const select = $("model");
      select.innerHTML = "";
      for (const m of answer.models) {
        state.models[m.name] = m;
        const opt = document.createElement("option");
        opt.value = m.name;
        opt.textContent = m.name;
        select.appendChild(opt);
      }
      showModel();
      setStatus(answer.models.length ? "" : "This server serves no model.");
    } catch (e) {
      setStatus(`Could not load the served models: ${e.message}. Reload the page to try again.`);
    }
  }

  function showModel() {
    const m = state.models[$("model").value];
    if (!m) return;
    const params = m.parameters.map((p) => `<li>${esc(p.name)} <span class="unit">${esc(p.unit)}</span></li>`).join("");
    $("model-info").innerHTML =
      `<p><strong>Channels:</strong> ${m.channels.map(esc).join(", ")}; times in [0, ${esc(m.T)}] h; ` +
      `trained on ${esc(m.n_obs)} observations per experiment.</p>` +
      `<p><strong>${m.parameters.length} parameters:</strong></p><ul class="params">${params}</ul>`;
  }

  // ------------------------------------------------------------------ the table
  // RFC 4180 CSV (quotes, doubled quotes, CRLF); a tab- or semicolon-separated table when its
  // header has no comma. Returns [{fields, line}] (line: 1-based, of the record's first line).
  function parseDelimited(text) {
    const firstLine = text.slice(0, text.indexOf("\n") === -1 ? text.length : text.indexOf("\n"));
    const sep = firstLine.includes(",") ? "," : firstLine.includes("\t") ? "\t" : firstLine.includes(";") ? ";" : ",";
    const records = [];
    let fields = [], field = "", quoted = false, line = 1, start = 1, i = 0;
    const n = text.length;
    while (i < n) {
      const c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
            continue;
          }
          quoted = false;
        } else {
          if (c === "\n") line++;
          field += c;
        }
        i++;
        continue;
      }
      if (c === '"' && field === "") quoted = true;
      else if (c === sep) {
        fields.push(field);
        field = "";
      } else if (c === "\n" || c === "\r") {
        fields.push(field);
        records.push({ fields, line: start });
        fields = [];
        field = "";
        if (c === "\r" && text[i + 1] === "\n") i++;
        line++;
        start = line;
      } else field += c;
      i++;
    }
    if (field !== "" || fields.length) {
      fields.push(field);
      records.push({ fields, line: start });
    }
    return records.filter((r) => r.fields.length > 1 || r.fields[0].trim() !== "");
  }

  const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
  const number = (text) => (NUMBER.test(text.trim()) ? Number(text.trim()) : NaN);

  // The long table (SPEC 10) -> experiments in the order of their first row, each with its
  // rows; rows whose numbers cannot be read mark their experiment bad (it is not sent). The
  // API checks the rest (channels, times in [0, T], value bounds) and names the row.
  function readTable(text, source) {
    if (text.startsWith("PAR1")) {
      throw new InputError(`${source} is a Parquet file; the page reads CSV (mechinfer estimate reads Parquet)`);
    }
    if (text.includes("\u0000") || (text.match(/\uFFFD/g) || []).length > 3) {
      throw new InputError(`${source} cannot be read: it is not a text (CSV) table`);
    }
    const records = parseDelimited(text.replace(/^\uFEFF/, ""));
    if (!records.length) throw new InputError(`${source} is empty: it has no header and no rows`);
    const header = records[0].fields.map((h) => h.trim());
    const col = Object.fromEntries(COLUMNS.map((c) => [c, header.indexOf(c)]));
    const missing = COLUMNS.filter((c) => col[c] < 0);
    if (missing.length) {
      throw new InputError(
        `${source} lacks column${missing.length > 1 ? "s" : ""} ${missing.join(", ")} (a long table needs ` +
          `${COLUMNS.join(", ")} in its header line; its header line is "${header.join(",").slice(0, 80)}")`
      );
    }
    if (records.length === 1) throw new InputError(`${source} is empty: it has a header line but no rows`);
    const experiments = new Map();
    const notes = [];
    for (const { fields, line } of records.slice(1)) {
      const get = (name) => (col[name] < fields.length ? fields[col[name]] : "");
      const id = get("experiment").trim();
      if (id === "") {
        notes.push(`line ${line}: no experiment id; the row is left out`);
        continue;
      }
      if (!experiments.has(id)) experiments.set(id, { id, rows: [], bad: [] });
      const e = experiments.get(id);
      const row = { line, t: number(get("t")), channel: get("channel").trim(), value: number(get("value")) };
      e.rows.push(row);
      if (fields.length < header.length) e.bad.push(`line ${line}: the row has ${fields.length} fields, the header ${header.length}`);
      else if (row.channel === "") e.bad.push(`line ${line}: the row has no channel`);
      else if (!Number.isFinite(row.t)) e.bad.push(`line ${line}: time ${JSON.stringify(get("t").trim())} is not a finite number`);
      else if (!Number.isFinite(row.value)) {
        e.bad.push(`line ${line}: value ${JSON.stringify(get("value").trim())} is not a finite number (t = ${fmt(row.t)} h)`);
      }
    }
    if (!experiments.size) throw new InputError(`${source} has no row with an experiment id`);
    return { experiments: [...experiments.values()], notes };
  }

  // An experiment's observations in the order the API gets them: by time, then channel (as
  // the bulk job orders them), with the table line of each.
  function observationSet(e, model) {
    const rank = (ch) => {
      const k = model.channels.indexOf(ch);
      return k < 0 ? model.channels.length : k;
    };
    const rows = [...e.rows].sort((a, b) => a.t - b.t || rank(a.channel) - rank(b.channel) || a.line - b.line);
    return { observations: rows.map((r) => ({ t: r.t, channel: r.channel, value: r.value })), lines: rows.map((r) => r.line) };
  }

  // "batch[3][7].channel: unknown channel ..." -> the experiment's line 94: "channel: unknown channel ..."
  function explain(message, sent) {
    const m = /^(?:batch\[\d+\]|observations)(?:\[(\d+)\])?\.?\s*(.*)$/s.exec(message);
    if (!m) return message;
    if (m[1] !== undefined && sent.lines[Number(m[1])] !== undefined) return `line ${sent.lines[Number(m[1])]}: ${m[2]}`;
    return m[2];
  }

  // Chunks of experiment indices that one infer request may carry: at most max_batch sets
  // (max_refine_cases with refine) and 90% of max_body_bytes.
  function chunks(todo, sets, refine, level) {
    const lim = state.limits;
    const most = refine === false ? lim.max_batch : Math.min(lim.max_batch, lim.max_refine_cases);
    const out = [];
    let cur = [], size = 64;
    for (const i of todo) {
      const bytes = JSON.stringify(sets[i].observations).length + 1;
      if (cur.length && (cur.length >= most || size + bytes > 0.9 * lim.max_body_bytes)) {
        out.push(cur);
        cur = [];
        size = 64;
      }
      cur.push(i);
      size += bytes;
    }
    if (cur.length) out.push(cur);
    return out.map((idx) => ({ idx, body: JSON.stringify({ batch: idx.map((i) => sets[i].observations), refine, level }) }));
  }

  // ------------------------------------------------------------------ a run
  async function readInput() {
    const file = $("file").files[0];
    if (file) {
      try {
        return { text: await file.text(), source: `the file ${file.name}` };
      } catch (e) {
        throw new InputError(`the file ${file.name} cannot be read: ${e.message}`);
      }
    }
    const text = $("paste").value;
    if (!text.trim()) throw new InputError("no table: choose a CSV file or paste a table");
    return { text, source: "the pasted table" };
  }

  async function run(event) {
    event.preventDefault();
    const clicked = performance.now();
    const runId = ++state.runId;
    const model = state.models[$("model").value];
    const refine = REFINE[$("refine").value];
    const level = Number($("level").value);
    clearOutput();
    if (!model) return problem(["no model is served, or the models could not be loaded"]);
    if (!(level >= 0.5 && level <= 0.999)) {
      problem([`level ${$("level").value || "(empty)"} must lie between 0.5 and 0.999`]);
      return $("level").focus();
    }
    let table;
    try {
      const { text, source } = await readInput();
      table = readTable(text, source);
    } catch (e) {
      if (!(e instanceof InputError)) throw e;
      problem([e.message]);
      return setStatus("Nothing estimated.");
    }
    const exps = table.experiments;
    const r = { runId, model, refine, refineLabel: $("refine").value, level, exps, clicked, answers: [], sets: [] };
    state.run = r;
    state.plots = new Map();
    exps.forEach((e, i) => {
      r.sets[i] = observationSet(e, model);
      if (e.bad.length) {
        const more = e.bad.length - 1;
        r.answers[i] = { error: e.bad[0] + (more ? ` (and ${more} more bad row${more > 1 ? "s" : ""})` : "") };
      }
    });
    renderTable(r);
    if (table.notes.length) problem(table.notes);
    const todo = exps.map((_, i) => i).filter((i) => !r.answers[i]);
    const work = chunks(todo, r.sets, refine, level);
    let done = 0;
    $("run").disabled = true;
    setStatus(`Estimating ${todo.length} experiment${todo.length === 1 ? "" : "s"}…`);
    const send = async (chunk) => {
      let results;
      try {
        results = (await call(`v1/models/${encodeURIComponent(model.name)}/infer`, chunk.body)).results;
      } catch (e) {
        results = chunk.idx.map(() => ({ error: `the request failed: ${e.message}` }));
      }
      chunk.idx.forEach((i, k) => {
        const a = results[k] || { error: "no answer" };
        r.answers[i] = a.error === undefined ? a : { error: explain(a.error, r.sets[i]) };
      });
      if (state.runId !== runId) return;
      chunk.idx.forEach((i) => updateRow(r, i));
      done += chunk.idx.length;
      setStatus(`${done} of ${todo.length} experiments answered…`);
      if (state.selected === null) {
        // the first experiment of the table that has an estimate, once those before it are answered
        const first = r.answers.findIndex((a) => !a || a.error === undefined);
        if (first >= 0 && r.answers[first]) select(first, false);
      }
    };
    const queue = [...work];
    await Promise.all(
      Array.from({ length: Math.min(IN_FLIGHT, queue.length) }, async () => {
        while (queue.length) await send(queue.shift());
      })
    );
    if (state.runId !== runId) return;
    $("run").disabled = false;
    finish(r);
  }

  function clearOutput() {
    $("message-list").innerHTML = "";
    $("messages").querySelector("h2").textContent = "Problems";
    $("messages").hidden = true;
    $("results").hidden = true;
    $("plot").hidden = true;
    $("plots").innerHTML = "";
    state.selected = null;
    delete $("results").dataset.msTable;
    delete $("plot").dataset.msPlot;
    $("results").dataset.state = "running";
  }

  function problem(lines) {
    const list = $("message-list");
    for (const text of lines) {
      const li = document.createElement("li");
      li.textContent = text;
      list.appendChild(li);
    }
    $("messages").hidden = false;
  }

  function finish(r) {
    const bad = r.exps.map((e, i) => [e, r.answers[i]]).filter(([, a]) => a.error !== undefined);
    if (bad.length) problem(bad.map(([e, a]) => `experiment ${e.id}: ${a.error}`));
    const ok = r.exps.length - bad.length;
    $("results-title").textContent =
      `Estimates: ${ok} of ${r.exps.length} experiment${r.exps.length === 1 ? "" : "s"} ` +
      `(refine ${r.refineLabel}, level ${r.level})`;
    $("messages").querySelector("h2").textContent = bad.length
      ? `Problems: ${bad.length} experiment${bad.length === 1 ? "" : "s"} not estimated`
      : "Problems";
    $("results").dataset.msTable = String(Math.round(performance.now() - r.clicked));
    $("results").dataset.state = "done";
    setStatus(`Done: ${ok} estimated, ${bad.length} not, in ${((performance.now() - r.clicked) / 1000).toFixed(2)} s.`);
  }

  // ------------------------------------------------------------------ the estimates table
  function renderTable(r) {
    const params = r.model.parameters;
    const head =
      `<thead><tr><th class="exp" scope="col">experiment</th><th scope="col">rows</th><th scope="col">refine status</th>` +
      `<th scope="col">gof p</th><th scope="col">NLL</th>` +
      params.map((p) => `<th scope="col">${esc(p.name)}<br><span class="unit">${esc(p.unit)}</span></th>`).join("") +
      `</tr></thead>`;
    const body = r.exps.map((e, i) => `<tr id="row-${i}">${rowCells(r, i)}</tr>`).join("");
    $("estimates").innerHTML = `${head}<tbody>${body}</tbody>`;
    r.exps.forEach((_, i) => decorate(r, i));
    $("results").hidden = false;
  }

  function rowCells(r, i) {
    const e = r.exps[i], a = r.answers[i];
    const exp = `<td class="exp"><button type="button" class="link" data-index="${i}" ${a && !a.error ? "" : "disabled"}>${esc(e.id)}</button></td>`;
    const n = `<td>${e.rows.length}</td>`;
    if (!a) return `${exp}${n}<td>waiting…</td><td></td><td></td>` + r.model.parameters.map(() => "<td></td>").join("");
    if (a.error !== undefined) {
      return `${exp}${n}<td class="err" colspan="${r.model.parameters.length + 3}">${esc(a.error)}</td>`;
    }
    const cells = r.model.parameters.map((p) => {
      const v = a.parameters[p.name], [lo, hi] = a.intervals[p.name];
      const und = a.determined && a.determined[p.name] === false;
      return (
        `<td data-param="${esc(p.name)}" data-value="${v}" data-low="${lo}" data-high="${hi}"` +
        (und ? ` class="undetermined" title="not determined by these observations: the prior's width"` : "") +
        `><span class="v">${fmt(v)}</span><span class="iv">${fmt(lo)} – ${fmt(hi)}</span></td>`
      );
    });
    return (
      `${exp}${n}<td class="status">${esc(a.refine_status)}</td>` +
      `<td class="gof" data-value="${a.gof_pvalue === null ? "" : a.gof_pvalue}">${fmt(a.gof_pvalue)}</td>` +
      `<td class="nll" data-value="${a.nll === null ? "" : a.nll}">${fmt(a.nll)}</td>${cells.join("")}`
    );
  }

  function decorate(r, i) {
    const tr = $(`row-${i}`), a = r.answers[i];
    tr.dataset.experiment = r.exps[i].id;
    tr.classList.toggle("failed", !!(a && a.error !== undefined));
    tr.classList.toggle("selected", state.selected === i);
    if (a && a.error !== undefined) tr.dataset.error = a.error;
  }

  function updateRow(r, i) {
    $(`row-${i}`).innerHTML = rowCells(r, i);
    decorate(r, i);
  }

  // ------------------------------------------------------------------ the plot
  async function select(i, focus) {
    const r = state.run;
    if (!r || !r.answers[i] || r.answers[i].error !== undefined) return;
    const previous = state.selected;
    state.selected = i;
    if (previous !== null && $(`row-${previous}`)) decorate(r, previous);
    decorate(r, i);
    if (focus) $(`row-${i}`).querySelector("button").focus();
    const e = r.exps[i];
    $("plot").hidden = false;
    $("plot-title").textContent = `Fit of experiment ${e.id}`;
    $("plot-note").textContent = "Computing the trajectories and bands…";
    $("plots").setAttribute("aria-busy", "true");
    let traj = state.plots.get(i);
    if (!traj) {
      try {
        const body = JSON.stringify({ observations: r.sets[i].observations, refine: r.refine, level: r.level });
        traj = await call(`v1/models/${encodeURIComponent(r.model.name)}/trajectories`, body);
        state.plots.set(i, traj);
      } catch (err) {
        if (state.selected === i && state.run === r) {
          $("plot-note").textContent = `The trajectories of ${e.id} could not be computed: ${explain(err.message, r.sets[i])}`;
          $("plots").removeAttribute("aria-busy");
        }
        return;
      }
    }
    if (state.selected !== i || state.run !== r) return; // another experiment was chosen meanwhile
    drawPlots(r, i, traj);
    if (!$("plot").dataset.msPlot) $("plot").dataset.msPlot = String(Math.round(performance.now() - r.clicked));
  }

  function drawPlots(r, i, traj) {
    const e = r.exps[i], est = traj.estimate;
    const gof = est.gof_pvalue === null ? "undefined" : fmt(est.gof_pvalue);
    $("plot-title").textContent = `Fit of experiment ${e.id}: refine ${est.refine_status}, gof p ${gof}`;
    $("plot-note").textContent =
      `Dots: the observations, bars ± the channel's noise σ; line: the model at the estimate; shaded: the central ` +
      `${Math.round(traj.level * 1000) / 10}% of the trajectories at ${traj.band_draws} draws from the parameters' uncertainty.`;
    const obs = r.sets[i].observations;
    $("plots").innerHTML = traj.channels
      .map((ch) => chart(ch, traj.t, obs.filter((o) => o.channel === ch.name), r.model.T))
      .join("");
    $("plots").removeAttribute("aria-busy");
    $("plots").dataset.experiment = e.id;
  }

  function ticks(lo, hi, count) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / count, mag = 10 ** Math.floor(Math.log10(raw)), f = raw / mag;
    const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    return out;
  }

  function chart(ch, t, obs, T) {
    const W = 460, H = 190, L = 58, R = 10, TOP = 22, B = 34;
    const finite = (xs) => xs.filter((x) => x !== null && Number.isFinite(x));
    const ys = [
      ...finite(ch.trajectory), ...finite(ch.low), ...finite(ch.high),
      ...obs.map((o) => o.value - ch.sigma), ...obs.map((o) => o.value + ch.sigma),
    ];
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (!Number.isFinite(y0) || !Number.isFinite(y1)) [y0, y1] = [0, 1];
    const pad = (y1 - y0) * 0.05 || 1;
    y0 -= pad;
    y1 += pad;
    const x = (v) => L + ((W - L - R) * v) / T;
    const y = (v) => TOP + ((H - TOP - B) * (y1 - v)) / (y1 - y0);
    const parts = [];
    for (const v of ticks(y0, y1, 5)) {
      parts.push(`<line class="grid" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>`);
      parts.push(`<text x="${L - 5}" y="${y(v) + 4}" text-anchor="end">${fmt(v)}</text>`);
    }
    for (const v of ticks(0, T, 6)) {
      parts.push(`<line class="axis" x1="${x(v)}" x2="${x(v)}" y1="${H - B}" y2="${H - B + 4}"/>`);
      parts.push(`<text x="${x(v)}" y="${H - B + 16}" text-anchor="middle">${fmt(v)}</text>`);
    }
    parts.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>`);
    parts.push(`<line class="axis" x1="${L}" x2="${L}" y1="${TOP}" y2="${H - B}"/>`);
    // the band: upper edge left to right, lower edge back; a gap (a failed solve) splits it
    let seg = [];
    const bands = [];
    t.forEach((tv, k) => {
      if (ch.low[k] === null || ch.high[k] === null) {
        if (seg.length) bands.push(seg);
        seg = [];
      } else seg.push(k);
    });
    if (seg.length) bands.push(seg);
    for (const s of bands) {
      const up = s.map((k) => `${x(t[k]).toFixed(1)},${y(ch.high[k]).toFixed(1)}`);
      const down = s.slice().reverse().map((k) => `${x(t[k]).toFixed(1)},${y(ch.low[k]).toFixed(1)}`);
      parts.push(`<polygon class="band" points="${up.concat(down).join(" ")}"/>`);
    }
    const line = t
      .map((tv, k) => (ch.trajectory[k] === null ? null : `${x(tv).toFixed(1)},${y(ch.trajectory[k]).toFixed(1)}`))
      .filter((p) => p !== null);
    parts.push(`<polyline class="fit" points="${line.join(" ")}"/>`);
    for (const o of obs) {
      parts.push(`<line class="bar" x1="${x(o.t)}" x2="${x(o.t)}" y1="${y(o.value - ch.sigma)}" y2="${y(o.value + ch.sigma)}"/>`);
      parts.push(`<circle class="obs" cx="${x(o.t)}" cy="${y(o.value)}" r="3"><title>t = ${fmt(o.t)} h, ${esc(ch.name)} = ${fmt(o.value)}</title></circle>`);
    }
    const unit = ch.unit ? ` (${esc(ch.unit)})` : "";
    parts.push(`<text x="${L}" y="14" font-weight="600">${esc(ch.name)}${unit}: ${obs.length} observation${obs.length === 1 ? "" : "s"}</text>`);
    parts.push(`<text x="${(L + W - R) / 2}" y="${H - 4}" text-anchor="middle">t (h)</text>`);
    const label = `${ch.name}${ch.unit ? " in " + ch.unit : ""} against time: ${obs.length} observations, the fitted trajectory and its band`;
    return `<svg class="chart" data-channel="${esc(ch.name)}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(label)}">${parts.join("")}</svg>`;
  }

  // ------------------------------------------------------------------ CSV download
  function csvField(v) {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  function estimatesCSV(r) {
    const names = r.model.parameters.map((p) => p.name);
    const hasDetermined = r.answers.some((a) => a && a.determined);
    const perParam = (n) => [n, `${n}_low`, `${n}_high`, ...(hasDetermined ? [`${n}_determined`] : [])];
    const header = ["experiment", ...names.flatMap(perParam), "level", "nll", "gof_pvalue", "refine_status", "n_observations", "error"];
    const lines = [header.map(csvField).join(",")];
    r.exps.forEach((e, i) => {
      const a = r.answers[i] || { error: "not answered" };
      const ok = a.error === undefined;
      const values = names.flatMap((n) =>
        ok
          ? [a.parameters[n], a.intervals[n][0], a.intervals[n][1], ...(hasDetermined ? [a.determined ? a.determined[n] : null] : [])]
          : perParam(n).map(() => null)
      );
      const row = [e.id, ...values, r.level, ok ? a.nll : null, ok ? a.gof_pvalue : null, ok ? a.refine_status : null, e.rows.length, ok ? null : a.error];
      lines.push(row.map(csvField).join(","));
    });
    return lines.join("\n") + "\n";
  }

  function download() {
    const r = state.run;
    if (!r) return;
    const blob = new Blob([estimatesCSV(r)], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `estimates-${r.model.name}.csv`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // ------------------------------------------------------------------ wiring
  $("form").addEventListener("submit", (ev) => {
    run(ev).catch((e) => {
      problem([`unexpected error: ${e.message}`]);
      $("run").disabled = false;
    });
  });
  $("model").addEventListener("change", showModel);
  $("download").addEventListener("click", download);
  $("estimates").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-index]");
    if (b) select(Number(b.dataset.index), false);
  });
  // up and down arrows move between the experiments' buttons (and show that one's fit)
  $("estimates").addEventListener("keydown", (ev) => {
    const b = ev.target.closest("button[data-index]");
    if (!b || (ev.key !== "ArrowDown" && ev.key !== "ArrowUp")) return;
    const buttons = [...$("estimates").querySelectorAll("button[data-index]:not([disabled])")];
    const k = buttons.indexOf(b) + (ev.key === "ArrowDown" ? 1 : -1);
    if (k >= 0 && k < buttons.length) {
      ev.preventDefault();
      select(Number(buttons[k].dataset.index), true);
    }
  });
  loadModels();
})();
