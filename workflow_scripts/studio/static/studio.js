// The studio's pages: plain DOM code over the JSON endpoints, uPlot for the charts.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "number") return String(value);
  // One format for a column: thousands separated whether the value is whole or not.
  if (Number.isInteger(value) || Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return Number(value.toPrecision(digits)).toString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}

const PALETTE = ["#2f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7ea4", "#57606a"];

// A loss chart: `groups` maps a label to {train: [[step, loss]], eval: [[step, loss]]};
// `ylabel` names another logged figure drawn the same way (a preference reward curve).
function lossChart(container, groups, smoothing = 0, ylabel = "loss") {
  const sets = [], series = [{ label: "step" }];
  Object.entries(groups).forEach(([label, curves], i) => {
    const color = PALETTE[i % PALETTE.length];
    for (const [kind, dash] of [["train", undefined], ["eval", [6, 4]]]) {
      const points = curves[kind] || [];
      if (!points.length) continue;
      const ys = kind === "train" ? ema(points.map((p) => p[1]), smoothing) : points.map((p) => p[1]);
      sets.push([points.map((p) => p[0]), ys]);
      series.push({ label: `${label} ${kind}`, stroke: color, dash, width: 2, spanGaps: true,
                    points: { show: kind === "eval" || points.length < 3 } });
    }
  });
  container.innerHTML = "";
  if (!sets.length) { container.append(el("p", { class: "muted" }, `no ${ylabel} rows yet`)); return null; }
  const data = sets.length === 1 ? sets[0] : uPlot.join(sets);
  const width = Math.max(320, container.clientWidth - 20);
  return new uPlot({ width, height: 300, series, scales: { x: { time: false } },
                     axes: [{ label: "step" }, { label: ylabel }], cursor: { drag: { x: true, y: false } } },
                   data, container);
}

function ema(values, alpha) {
  if (!alpha) return values;
  let last = null;
  return values.map((v) => (last = last === null ? v : alpha * last + (1 - alpha) * v));
}

// ---------------------------------------------------------------- Experiments
const COLUMNS = [
  ["experiment", "experiment"], ["status", "status"], ["base_model", "base model"], ["dataset", "dataset"],
  ["method", "method"], ["r", "r"], ["alpha", "alpha"], ["learning_rate", "lr"], ["steps", "steps"],
  ["wall_time_s", "time"], ["tokens_per_s", "tokens/s"], ["peak_cuda_reserved_mb", "GPU MB"],
  ["peak_memory_mb", "host RSS MB"],
  ["final_loss", "train loss"], ["eval_loss", "valid loss"], ["test_loss", "test loss"],
  ["m.bleu4", "BLEU-4"], ["m.rougeL", "ROUGE-L"], ["m.chrf", "chrF"], ["m.distinct2", "distinct-2"],
];

// Shown unless the reader picks otherwise (kept in localStorage): the table fits 1280 px.
const HIDDEN_BY_DEFAULT = ["alpha", "peak_memory_mb", "final_loss", "m.distinct2"];

function shownColumns() {
  let hidden = HIDDEN_BY_DEFAULT;
  try { hidden = JSON.parse(localStorage.getItem("studio.hiddenColumns")) || hidden; } catch (e) { /* default */ }
  return COLUMNS.filter(([key]) => !hidden.includes(key));
}

function columnChooser(onChange) {
  const shown = new Set(shownColumns().map(([key]) => key));
  return el("details", { id: "columns", class: "columns" }, el("summary", {}, "columns"),
    COLUMNS.map(([key, title]) => el("label", {}, el("input", {
      type: "checkbox", "data-key": key, checked: shown.has(key), onchange: (ev) => {
        ev.target.checked ? shown.add(key) : shown.delete(key);
        localStorage.setItem("studio.hiddenColumns",
          JSON.stringify(COLUMNS.map(([k]) => k).filter((k) => !shown.has(k))));
        onChange();
      } }), " " + title)));
}

function cell(row, key) {
  return key.startsWith("m.") ? row.metrics[key.slice(2)] : row[key];
}

async function experimentsPage() {
  const table = $("#experiments"), selected = new Set();
  let rows = [], sortKey = "experiment", ascending = true, columns = shownColumns();
  const head = el("tr");
  function drawHead() {
    columns = shownColumns();
    head.replaceChildren(el("th", {}, ""), ...columns.map(([key, title]) =>
      el("th", { "data-key": key, onclick: () => {
        ascending = sortKey === key ? !ascending : true; sortKey = key; draw();
      } }, title)));
  }
  drawHead();
  table.tHead.append(head);
  $(".toolbar").append(columnChooser(() => { drawHead(); draw(); }));
  const compareButton = $("#compare-selected");
  compareButton.addEventListener("click", () => {
    location.href = "/compare?" + [...selected].map((e) => "e=" + encodeURIComponent(e)).join("&");
  });
  $("#filter").addEventListener("input", draw);
  $("#status-filter").addEventListener("change", draw);

  function draw() {
    const text = $("#filter").value.toLowerCase(), status = $("#status-filter").value;
    const shown = rows.filter((r) => (!status || r.status === status) &&
      [r.experiment, r.base_model, r.dataset, r.method, r.status].join(" ").toLowerCase().includes(text));
    shown.sort((a, b) => {
      const x = cell(a, sortKey), y = cell(b, sortKey);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * (ascending ? 1 : -1);
    });
    for (const th of head.querySelectorAll("th[data-key]")) {
      th.textContent = th.textContent.replace(/ [▲▼]$/, "") + (th.dataset.key === sortKey ? (ascending ? " ▲" : " ▼") : "");
    }
    table.tBodies[0].replaceChildren(...shown.map((r) => el("tr", { "data-experiment": r.experiment },
      el("td", {}, el("input", { type: "checkbox", checked: selected.has(r.experiment), onchange: (ev) => {
        ev.target.checked ? selected.add(r.experiment) : selected.delete(r.experiment);
        compareButton.disabled = selected.size < 1;
      } })),
      columns.map(([key]) => {
        const value = cell(r, key);
        if (key === "status") return el("td", {}, el("span", { class: `status status-${value}` }, value));
        if (key === "wall_time_s") return el("td", { class: "num" }, duration(value));
        if (key === "steps") return el("td", { class: "num" }, r.max_steps > 0 ? `${fmt(value)} / ${fmt(r.max_steps)}` : fmt(value));
        const ci = r.intervals[key.startsWith("m.") ? key.slice(2) : key];
        if (ci) {
          return el("td", { class: "num" }, fmt(value), el("span", { class: "ci" }, ` [${fmt(ci[0], 3)}, ${fmt(ci[1], 3)}]`));
        }
        return el("td", { class: typeof value === "number" ? "num" : "" }, fmt(value));
      }))));
  }

  async function load() {
    const body = await api("/api/experiments");
    rows = body.experiments;
    $("#counts").textContent = Object.entries(body.counts).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(" · ");
    draw();
  }
  await load();
  setInterval(load, 5000);
  await exportsSection();
}

// Every experiment's exports (results/exports/), with each check and the command that runs it.
async function exportsSection() {
  const body = await api("/api/exports"), section = $("#exports");
  const rows = Object.entries(body.exports).flatMap(([name, files]) => files.map((f) => el("tr", {},
    el("td", {}, name), el("td", {}, f.target), el("td", {}, f.file),
    el("td", { class: "num" }, `${fmt(f.size_bytes / 1e6, 3)} MB`),
    el("td", {}, f.check ? [f.check.verdict, f.check.agreement != null
      ? ` · ${fmt(100 * f.check.agreement, 3)}% of ${f.check.tokens_compared} tokens` : ""] : ""),
    el("td", {}, el("code", {}, f.run)))));
  section.hidden = rows.length === 0;
  section.querySelector("tbody").replaceChildren(...rows);
}

// ---------------------------------------------------------------- Compare
async function comparePage() {
  const names = new URLSearchParams(location.search).getAll("e");
  if (!names.length) {
    const { experiments } = await api("/api/experiments");
    $("#picker").hidden = false;
    $("#picker-list").replaceChildren(...experiments.map((r) =>
      el("label", {}, el("input", { type: "checkbox", value: r.experiment }), ` ${r.experiment} `,
         el("span", { class: `status status-${r.status}` }, r.status))));
    $("#picker-go").addEventListener("click", () => {
      const picked = [...document.querySelectorAll("#picker-list input:checked")].map((i) => i.value);
      location.search = picked.map((e) => "e=" + encodeURIComponent(e)).join("&");
    });
    return;
  }
  const data = await api("/api/compare?" + names.map((e) => "e=" + encodeURIComponent(e)).join("&"));
  $("#comparison").hidden = false;
  const drawChart = () => {
    const alpha = Number($("#smoothing").value);
    $("#smoothing-value").textContent = alpha;
    lossChart($("#loss-chart"), data.curves, alpha);
    rewardCharts(data.curves, alpha);
  };
  $("#smoothing").addEventListener("input", drawChart);
  drawChart();

  const header = el("tr", {}, el("th", {}, ""), names.map((n) => el("th", {}, n)));
  $("#config-diff").replaceChildren(el("thead", {}, header.cloneNode(true)), el("tbody", {},
    data.config_diff.length ? data.config_diff.map((d) => el("tr", {}, el("td", {}, d.key),
      names.map((n) => el("td", {}, JSON.stringify(d.values[n]))))) :
      el("tr", {}, el("td", { colspan: names.length + 1 }, "every setting is the same"))));

  $("#metrics").replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "metric"),
    names.map((n, i) => el("th", {}, i ? `${n} (Δ vs ${names[0]})` : n)))),
    el("tbody", {}, data.metrics.map((m) => el("tr", {}, el("td", {}, m.metric), names.map((n, i) => {
      const diff = m.diff[n], ci = m.intervals[n], base = m.vs_base && m.vs_base[n];
      // coloured only where the report's paired interval backs a verdict (compare_claims.py)
      const claim = (v) => (v === "better" || v === "worse" ? v : "ci");
      const signed = (x) => `${x > 0 ? "+" : ""}${fmt(x, 3)}`;
      return el("td", { class: "num" }, fmt(m.values[n]),
        ci ? el("span", { class: "ci" }, ` [${fmt(ci[0], 3)}, ${fmt(ci[1], 3)}]`) : null,
        i && m.not_compared && m.not_compared[n] ? el("span", { class: "ci not-compared" },
          ` (${m.not_compared[n]}: not compared)`) : null,
        i && diff !== null && diff !== undefined ? el("span", { class: `vs-first ${claim(m.verdict && m.verdict[n])}` },
          ` (${signed(diff)})`) : null,
        base && base.difference !== null ? el("span", { class: `vs-base ${claim(base.verdict)}`,
          title: base.verdict || "" }, ` vs base ${signed(base.difference)}` +
          (base.low !== null ? ` [${signed(base.low)}, ${signed(base.high)}]` : "")) : null);
    })))));

  $("#predictions").replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "prompt"), el("th", {}, "reference"),
    names.map((n) => el("th", {}, n)))), el("tbody", {}, data.predictions.map((p) => el("tr", {},
      el("td", {}, p.prompt), el("td", {}, p.reference), names.map((n) => el("td", {}, p.predictions[n] ?? ""))))));
}

// Preference experiments' reward curves (rewards/margins, rewards/accuracies), one chart each.
function rewardCharts(curves, alpha) {
  const names = [...new Set(Object.values(curves).flatMap((c) => Object.keys(c.rewards || {})))];
  $("#rewards").hidden = names.length === 0;
  $("#reward-charts").replaceChildren(...names.map((name) => {
    const box = el("div", { class: "chart reward-chart", "data-curve": name });
    const groups = Object.fromEntries(Object.entries(curves)
      .filter(([, c]) => c.rewards && c.rewards[name]).map(([label, c]) => [label, c.rewards[name]]));
    setTimeout(() => lossChart(box, groups, alpha, name));  // once the box has its width
    return box;
  }));
}

// ---------------------------------------------------------------- Live
function livePage() {
  const cards = new Map();
  const source = new EventSource("/api/live/events");
  source.onmessage = (event) => {
    const { time, running } = JSON.parse(event.data);
    $("#live-clock").textContent = "updated " + new Date(time * 1000).toLocaleTimeString();
    $("#live-empty").hidden = running.length > 0;
    const seen = new Set();
    for (const run of running) {
      seen.add(run.experiment);
      if (!cards.has(run.experiment)) cards.set(run.experiment, liveCard(run.experiment));
      updateCard(cards.get(run.experiment), run);
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) { card.node.remove(); cards.delete(name); }
    }
  };
}

const LIVE_FIGURES = { step: "step", loss: "loss", learning_rate: "learning rate",
                       tokens_per_s: "tokens/s", elapsed: "elapsed", remaining: "remaining" };

function liveCard(name) {
  const node = el("div", { class: "card live-card", "data-experiment": name }, el("h3", {}, name),
    el("progress", { max: 1, value: 0 }),
    el("div", { class: "figures" }, Object.entries(LIVE_FIGURES).map(([f, label]) =>
      el("span", {}, label, el("b", { class: f }, "–")))),
    el("div", { class: "chart live-chart" }));
  $("#live-cards").append(node);
  return { node, chart: null, points: -1 };
}

function updateCard(card, run) {
  const q = (cls) => card.node.querySelector("." + cls);
  q("step").textContent = run.max_steps > 0 ? `${fmt(run.step)} / ${fmt(run.max_steps)}` : fmt(run.step);
  q("loss").textContent = fmt(run.loss);
  q("learning_rate").textContent = fmt(run.learning_rate, 3);
  q("tokens_per_s").textContent = fmt(run.tokens_per_s, 3);
  q("elapsed").textContent = duration(run.elapsed_s);
  q("remaining").textContent = run.remaining_s === null ? "–" : duration(run.remaining_s);
  const bar = card.node.querySelector("progress");
  bar.max = run.max_steps || 1; bar.value = run.step;
  const count = run.train.length + run.eval.length;
  if (count !== card.points) {
    card.points = count;
    if (card.chart) card.chart.destroy();
    card.chart = lossChart(q("live-chart"), { [run.experiment]: run });
  }
}

// ---------------------------------------------------------------- Chat
async function chatPage() {
  const { base_models: bases } = await api("/api/chat/models");
  const select = $("#chat-base");
  select.replaceChildren(...Object.entries(bases).map(([name, info]) =>
    el("option", { value: name, disabled: !info.ready }, info.ready ? name : `${name} (not built)`)));
  const conversation = new Map(); // model id -> list of messages (its own answers)

  function showAdapters() {
    const info = bases[select.value];
    $("#chat-adapters").replaceChildren(...(info ? info.adapters : []).map((a) =>
      el("label", {}, el("input", { type: "checkbox", value: a.experiment, class: "chat-adapter", onchange: resetColumns }),
         ` ${a.experiment}${a.quantized ? " (4-bit base)" : ""}`)));
    $("#chat-max-tokens").max = info ? info.max_tokens_cap : 512;
    resetColumns();
  }
  function targets() {
    const picked = [...document.querySelectorAll(".chat-adapter:checked")].map((i) => i.value);
    return ($("#chat-use-base").checked ? [select.value] : []).concat(picked);
  }
  function resetColumns() {
    conversation.clear();
    $("#chat-columns").replaceChildren(...targets().map((id) => {
      conversation.set(id, []);
      return el("div", { class: "column", "data-model": id }, el("h3", {}, id), el("div", { class: "transcript" }));
    }));
  }
  select.addEventListener("change", showAdapters);
  $("#chat-use-base").addEventListener("change", resetColumns);
  $("#chat-reset").addEventListener("click", resetColumns);
  $("#chat-message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("#chat-form").requestSubmit(); }
  });
  function chatTools() {
    // The tools box as a list of schemas (undefined when empty); an error is shown, not sent.
    const raw = $("#chat-tools").value.trim(), error = $("#chat-tools-error");
    error.hidden = true;
    if (!raw) return undefined;
    let tools;
    try { tools = JSON.parse(raw); } catch (err) { tools = err; }
    if (!Array.isArray(tools)) {
      error.textContent = `tools: ${tools instanceof Error ? tools.message : "expected a JSON list of function schemas"}`;
      error.hidden = false;
      throw error;
    }
    return tools;
  }
  $("#chat-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = $("#chat-message").value.trim();
    if (!text || !conversation.size) return;
    let tools;
    try { tools = chatTools(); } catch { return; }
    $("#chat-message").value = "";
    $("#chat-send").disabled = true;
    await Promise.all([...conversation.keys()].map((id) => ask(id, text, tools)));
    $("#chat-send").disabled = false;
  });

  function addCall(calls, delta) {
    // Streamed tool-call deltas, merged by index (arguments may come in pieces).
    const call = calls[delta.index] || (calls[delta.index] = { id: "", type: "function", function: { name: "", arguments: "" } });
    if (delta.id) call.id = delta.id;
    if (delta.function && delta.function.name) call.function.name += delta.function.name;
    if (delta.function && delta.function.arguments) call.function.arguments += delta.function.arguments;
  }

  async function ask(id, text, tools) {
    const column = document.querySelector(`.column[data-model="${CSS.escape(id)}"] .transcript`);
    const history = conversation.get(id);
    const last = history[history.length - 1];
    const role = last && last.tool_calls ? "tool" : "user";  // an answer to a call is its result
    history.push(role === "tool" ? { role, content: text, tool_call_id: last.tool_calls[0].id } : { role, content: text });
    column.append(el("div", { class: `msg ${role}` }, text));
    const answer = el("div", { class: "msg assistant streaming" });
    column.append(answer);
    const system = $("#chat-system").value.trim();
    const body = {
      model: id, stream: true, messages: (system ? [{ role: "system", content: system }] : []).concat(history),
      temperature: Number($("#chat-temperature").value), top_p: Number($("#chat-top-p").value),
      max_tokens: Number($("#chat-max-tokens").value), seed: Number($("#chat-seed").value),
    };
    if (tools) body.tools = tools;
    let content = "", usage = null, reason = "";
    const calls = [];
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      if (!response.ok) throw new Error((await response.json()).error.message);
      for await (const chunk of sseChunks(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) { content += choice.delta.content; answer.textContent = content; }
          for (const delta of (choice.delta && choice.delta.tool_calls) || []) addCall(calls, delta);
          if (choice.finish_reason) reason = choice.finish_reason;
        }
      }
      history.push(calls.length ? { role: "assistant", content: content || null, tool_calls: calls } : { role: "assistant", content });
      answer.append(...calls.map((c) => el("div", { class: "tool-call" }, `${c.function.name}(${c.function.arguments})`)));
      answer.append(el("span", { class: "meta" }, `${usage ? usage.completion_tokens : "?"} tokens · ${reason}`));
    } catch (err) {
      answer.classList.add("error");
      answer.textContent = err.message;
      history.pop();
    }
    answer.classList.remove("streaming");
    answer.classList.add("finished");
  }
  showAdapters();
}

async function* sseChunks(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// ---------------------------------------------------------------- Data
async function dataPage() {
  const { datasets } = await api("/api/datasets");
  const keyValues = (title, object) => el("table", { class: "data" }, el("thead", {}, el("tr", {}, el("th", {}, title), el("th", {}, "records"))),
    el("tbody", {}, Object.entries(object).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", { class: "num" }, fmt(v))))));
  $("#datasets").replaceChildren(...datasets.map((d) => el("div", { class: "card dataset", "data-dataset": d.dataset },
    el("h3", {}, `${d.dataset} `, el("span", { class: "muted" }, d.format)),
    d.prepared ? [
      el("p", {}, `${fmt(d.raw)} raw records, ${fmt(d.kept)} kept`),
      keyValues("split", d.splits), keyValues("rejected because", d.rejected),
      el("h4", {}, "per file"),
      el("table", { class: "data" }, el("thead", {}, el("tr", {}, ["file", "raw", "kept", "rejected", "split"].map((h) => el("th", {}, h)))),
        el("tbody", {}, Object.entries(d.per_file).map(([file, f]) => el("tr", {}, el("td", {}, file),
          [f.raw, f.kept, f.rejected].map((v) => el("td", { class: "num" }, fmt(v))), el("td", {}, f.split))))),
    ] : el("p", { class: "muted" }, "not prepared yet"))));
  $("#search-dataset").replaceChildren(...datasets.map((d) => el("option", {}, d.dataset)));
  const run = async () => {
    const params = new URLSearchParams({ q: $("#search-query").value, where: $("#search-where").value, limit: 200 });
    const result = await api(`/api/datasets/${encodeURIComponent($("#search-dataset").value)}/search?${params}`);
    $("#search-count").textContent = `${result.rows.length}${result.truncated ? "+" : ""} found in ${result.scanned} scanned`;
    const rejects = result.where === "rejects";
    $("#search-results").replaceChildren(
      el("thead", {}, el("tr", {}, (rejects ? ["reason", "detail", "file", "index", "record"] : ["id", "source", "messages"]).map((h) => el("th", {}, h)))),
      el("tbody", {}, result.rows.map((r) => el("tr", {}, rejects
        ? [el("td", {}, r.reason), el("td", {}, r.detail), el("td", {}, r.file), el("td", { class: "num" }, r.index), el("td", {}, r.text)]
        : [el("td", {}, r.id), el("td", {}, r.source ? `${r.source.file}#${r.source.index}` : ""),
           el("td", {}, (r.messages || []).map((m) => `${m.role}: ${m.content}`).join("\n"))]))));
  };
  $("#search-go").addEventListener("click", run);
  $("#search-query").addEventListener("keydown", (ev) => { if (ev.key === "Enter") run(); });
  if (datasets.length) run();
}

// ---------------------------------------------------------------- Logs
async function logsPage() {
  let logs = [], follower = null;
  const list = $("#log-list");
  async function refresh() {
    logs = (await api("/api/logs")).logs;
    draw();
  }
  function draw() {
    const text = $("#log-filter").value.toLowerCase(), current = $("#log-name").dataset.name;
    list.replaceChildren(...logs.filter((l) => l.name.toLowerCase().includes(text)).map((l) =>
      el("li", { class: [l.active ? "active-log" : "", l.name === current ? "selected" : ""].join(" "),
                 "data-name": l.name, title: `${l.size} bytes`, onclick: () => open(l.name) }, l.name)));
  }
  async function open(name) {
    if (follower) follower.close();
    const log = await api("/api/logs/view?name=" + encodeURIComponent(name));
    $("#log-name").textContent = name;
    $("#log-name").dataset.name = name;
    const pre = $("#log-text");
    pre.textContent = log.text;
    pre.scrollTop = pre.scrollHeight;
    draw();
    follower = new EventSource(`/api/logs/follow?name=${encodeURIComponent(name)}&offset=${log.size}`);
    $("#log-following").textContent = "following";
    follower.onmessage = (event) => {
      const { text } = JSON.parse(event.data);
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(text);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    };
  }
  $("#log-filter").addEventListener("input", draw);
  await refresh();
  setInterval(refresh, 5000);
  const wanted = new URLSearchParams(location.search).get("name");
  if (wanted) open(wanted);
}

const PAGES = { experiments: experimentsPage, compare: comparePage, live: livePage, chat: chatPage,
                data: dataPage, logs: logsPage };
const init = PAGES[document.body.dataset.page];
if (init) {
  Promise.resolve(init()).catch((err) => {
    $("main").prepend(el("p", { class: "msg error", id: "page-error" }, String(err.message || err)));
  });
}
