// gpujob ui, one job (and compare): the log followed over server-sent events, progress, the uPlot chart, cancel.
// Everything a job wrote is inserted with textContent, never as HTML.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  // [key, y label, x label(, y label with no GPU line: a CPU job's, as gpujob.plots.WITHOUT_GPU)]: the
  // system panels (runner/sysmetrics.py's samples) against minutes
  var PANELS = [["loss", "loss", "step"], ["lr", "learning rate", "step"], ["wer", "WER (%)", "step"],
                ["cer", "CER (%)", "step"], ["speed", "samples/s", "step"],
                ["util", "GPU utilisation, loader wait (%)", "minutes", "loader wait (%)"],
                ["memory", "memory (GB)", "minutes"], ["cpu", "CPU (% of a core)", "minutes"]];
  function panelTitle(pt, lines) {
    var gpu = lines.some(function (s) { return /(^| )GPU( memory)?$/.test(s.label); });
    return pt[3] && !gpu ? pt[3] : pt[1];
  }

  // ---- the series the chart draws, from the metric history (as gpujob.plots.panels makes them)
  function seriesFrom(points, prefix, run) {
    var out = {}, order = [], t0 = null;
    function add(panel, label, step, value, dash) {
      if (typeof value !== "number" || !isFinite(value)) return;
      var key = panel + "\u0000" + label;
      if (!out[key]) {
        out[key] = { panel: panel, label: (prefix ? prefix + " " : "") + label, steps: [], values: [], run: run || 0, dash: !!dash };
        order.push(key);
      }
      out[key].steps.push(step); out[key].values.push(value);
    }
    points.forEach(function (p) {
      if (p.event === "progress") {
        add("loss", "train loss", p.step, p.loss); add("lr", "lr", p.step, p.learning_rate);
        add("speed", "speed", p.step, p.samples_per_s);
      } else if (p.event === "eval") {
        add("loss", "eval loss", p.step, p.eval_loss, true);
        add("wer", "wer", p.step, p.wer * 100); add("cer", "cer", p.step, p.cer * 100);
        Object.keys(p).forEach(function (k) {
          if (k.indexOf("wer/") === 0) add("wer", k.slice(4), p.step, p[k] * 100, true);
          if (k.indexOf("cer/") === 0) add("cer", k.slice(4), p.step, p[k] * 100, true);
        });
      } else if (p.event === "system" && typeof p.t === "number") {
        if (t0 === null) t0 = p.t;
        var m = Math.round((p.t - t0) / 60 * 10000) / 10000;
        add("util", "GPU", m, p.gpu_util_percent); add("util", "loader wait", m, p.loader_wait_percent, true);
        if (typeof p.rss_bytes === "number") add("memory", "RSS", m, p.rss_bytes / 1e9);
        if (typeof p.gpu_mem_used_bytes === "number") add("memory", "GPU memory", m, p.gpu_mem_used_bytes / 1e9, true);
        add("cpu", "cpu", m, p.cpu_percent);
      }
    });
    var panelOrder = PANELS.map(function (x) { return x[0]; });
    return order.map(function (k) { return out[k]; })
      .sort(function (a, b) { return panelOrder.indexOf(a.panel) - panelOrder.indexOf(b.panel); });
  }

  var COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var plots = {}, lastSeries = [];
  function colour(s) { return COLOURS[(s.run || 0) % COLOURS.length]; }  // one colour per job in every panel
  var controls = { log: false, smooth: 0 };
  // an exponential moving average (as TensorBoard's smoothing): weight w of the past, 0 = as recorded
  function smooth(values, w) {
    if (!w) return values;
    var out = [], last = null;
    values.forEach(function (v) { last = last === null ? v : last * w + v * (1 - w); out.push(last); });
    return out;
  }
  function draw(chart, series) {
    lastSeries = series;
    window.gpujobChart = { series: series.map(function (s) {
      return { panel: s.panel, label: s.label, steps: s.steps, values: s.values, run: s.run || 0, colour: colour(s) }; }) };
    chart.setAttribute("data-series", JSON.stringify(window.gpujobChart.series));
    if (!window.uPlot) return;
    PANELS.forEach(function (pt) {
      var lines = series.filter(function (s) { return s.panel === pt[0]; });
      if (!lines.length) return;
      var stepSet = {};
      lines.forEach(function (s) { s.steps.forEach(function (x) { stepSet[x] = true; }); });
      var xs = Object.keys(stepSet).map(Number).sort(function (a, b) { return a - b; });
      var data = [xs].concat(lines.map(function (s) {
        var at = {}, vs = smooth(s.values, pt[2] === "step" ? controls.smooth : 0);
        s.steps.forEach(function (x, i) { at[x] = vs[i]; });
        return xs.map(function (x) { return x in at ? at[x] : null; });
      }));
      var div = plots[pt[0]] && plots[pt[0]].div;
      if (plots[pt[0]] && plots[pt[0]].n === lines.length) { plots[pt[0]].u.setData(data); return; }
      var title = panelTitle(pt, lines);
      if (!div) {
        div = document.createElement("div"); div.className = "panel";
        var h = document.createElement("h3"); div.appendChild(h); chart.appendChild(div);
      } else { plots[pt[0]].u.destroy(); }
      div.querySelector("h3").textContent = title;
      var u = new window.uPlot({
        width: panelWidth(div), height: 220,
        scales: { x: { time: false }, y: controls.log && positive(data) ? { distr: 3 } : {} },
        axes: [{ label: pt[2] }, { label: title, size: 60, values: function (u, vals) { return vals.map(tick); } }],
        series: [{ label: pt[2] }].concat(lines.map(function (s) {
          return { label: s.label, stroke: colour(s), width: 1.5, spanGaps: true, dash: s.dash ? [6, 4] : undefined,
                   points: { show: pt[0] === "wer" || pt[0] === "cer" || s.steps.length < 3 } };
        }))
      }, data, div);
      div.setAttribute("data-colours", JSON.stringify(lines.map(colour)));
      div.setAttribute("data-panel", pt[0]);
      plots[pt[0]] = { u: u, n: lines.length, div: div };
    });
    fitPanels();  // a panel drawn before its row-mates existed was sized to the whole row
    var png = document.getElementById("curves-png");  // the picture for readers without JavaScript
    if (png && Object.keys(plots).length) png.hidden = true;
  }

  function positive(data) {  // a log axis only where every value is above 0
    return data.slice(1).every(function (col) { return col.every(function (v) { return v === null || v > 0; }); });
  }
  function redraw() {
    Object.keys(plots).forEach(function (k) { plots[k].n = -1; });  // draw() makes each panel anew
    draw(chart, lastSeries);
  }
  var logBox = $("chart-log"), smoothRange = $("chart-smooth");
  if (logBox) logBox.addEventListener("change", function () { controls.log = logBox.checked; redraw(); });
  if (smoothRange) smoothRange.addEventListener("input", function () {
    controls.smooth = Math.min(0.99, Math.max(0, Number(smoothRange.value) || 0)); redraw();
  });

  // a learning rate of 1e-5 is not "0": small values in exponent form
  function tick(v) { return v == null ? "" : (v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : String(+v.toPrecision(6))); }
  function panelWidth(div) { return Math.max(240, Math.floor(div.clientWidth || 400) - 4); }
  function fitPanels() {
    Object.keys(plots).forEach(function (k) { plots[k].u.setSize({ width: panelWidth(plots[k].div), height: 220 }); });
  }
  window.addEventListener("resize", fitPanels);

  var chart = $("chart");
  function loadMetrics() {
    var url = chart && chart.getAttribute("data-metrics");
    if (!url) return Promise.resolve();
    return fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d) draw(chart, seriesFrom(d.points, "", 0)); }).catch(function () {});
  }
  if (chart) {
    var initial = [];
    try { initial = JSON.parse(chart.getAttribute("data-series") || "[]"); } catch (e) { initial = []; }
    if (chart.getAttribute("data-metrics")) loadMetrics(); else draw(chart, initial);
  }

  // ---- progress and log (job page)
  var section = $("progress");
  var log = $("log");
  function setText(id, value) { var el = $(id); if (el && el.textContent !== value) el.textContent = value; }
  function progress(r) {
    var bar = $("bar"); if (bar) bar.value = r.progress || 0;
    setText("step", r.progress_text); setText("eta", r.eta_text); setText("loss", r.loss_text);
    setText("wer", r.wer_text); setText("runtime", r.runtime_text); setText("cost", r.cost_text);
    var st = $("status"); if (st) { st.textContent = r.status; st.className = "badge s-" + r.status; }
  }
  // [progress] and [heartbeat] lines are folded out of the view (one a step); the toggle shows them
  var MAX_LINES = 5000, allLines = [], showProgress = $("log-progress");
  function folded(l) { return !(showProgress && showProgress.checked) && /^\[(progress|heartbeat)\] /.test(l); }
  function text(lines) { return lines.filter(function (l) { return !folded(l); }).map(function (l) { return l + "\n"; }).join(""); }
  function append(lines, reset) {
    var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    if (reset) { log.textContent = ""; allLines = []; }
    allLines = allLines.concat(lines);
    if (allLines.length > MAX_LINES) allLines = allLines.slice(-MAX_LINES);
    log.appendChild(document.createTextNode(text(lines)));
    if (atEnd || reset) log.scrollTop = log.scrollHeight;
  }
  if (log) {
    allLines = log.textContent.replace(/\n$/, "").split("\n");
    log.textContent = text(allLines);
    log.scrollTop = log.scrollHeight;  // the tail's end in view, as `logs --tail` shows it
    if (showProgress) showProgress.addEventListener("change", function () {
      log.textContent = text(allLines); log.scrollTop = log.scrollHeight;
    });
  }
  if (section && log && window.EventSource && section.getAttribute("data-active") === "true") {
    var es = new EventSource(log.getAttribute("data-stream"));
    var lastMetrics = 0;
    es.addEventListener("log", function (e) { var d = JSON.parse(e.data); append(d.lines, d.reset); });
    es.addEventListener("progress", function (e) {
      progress(JSON.parse(e.data));
      var now = Date.now(); if (now - lastMetrics > 2000) { lastMetrics = now; loadMetrics(); }
    });
    es.addEventListener("end", function (e) {
      var d = JSON.parse(e.data); es.close(); setText("log-state", "(ended: " + d.status + ")"); loadMetrics();
      var form = $("cancel"); if (form) form.hidden = true;
      var img = $("curves-png"); if (img) img.src = img.src.split("?")[0] + "?t=" + Date.now();
    });
  }

  // ---- cancel: ask first (without JavaScript the button leads to a confirmation page)
  var form = $("cancel");
  if (form && form.elements.confirm && form.elements.confirm.value !== "yes") {
    form.addEventListener("submit", function (e) {
      if (!window.confirm("Cancel job " + (section ? section.getAttribute("data-job") : "") + "? It gets SIGTERM, then SIGKILL after 10 s.")) {
        e.preventDefault(); return;
      }
      form.elements.confirm.value = "yes";
    });
  }
})();
