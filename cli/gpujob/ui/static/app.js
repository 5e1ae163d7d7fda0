// gpujob ui: the jobs table kept live (polls /api/jobs every 1.5 s). Job text is set with textContent only.
(function () {
  "use strict";
  var table = document.getElementById("jobs");
  if (!table || !window.fetch) return;
  var body = table.tBodies[0];
  var empty = document.getElementById("empty");
  var CELLS = ["id", "name", "backend", "status", "submitted", "progress", "eta", "wer", "runtime", "cost", "sweep"];

  function link(href, text) { var a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

  function fill(tr, r) {
    var values = { name: r.name, backend: r.backend, progress: r.progress_text, eta: r.eta_text, wer: r.wer_text,
                   runtime: r.runtime_text, cost: r.cost_text, submitted: r.submitted_text };
    var sub = tr.querySelector("td.submitted"); if (sub) sub.setAttribute("data-sort", String(r.created_at));
    CELLS.forEach(function (c) {
      var td = tr.querySelector("td." + c);
      if (!td) { td = document.createElement("td"); td.className = c; tr.appendChild(td); }
      if (c === "id") { if (!td.firstChild) td.appendChild(link("/jobs/" + encodeURIComponent(r.id), r.id)); }
      else if (c === "status") {
        var span = td.querySelector("span") || td.appendChild(document.createElement("span"));
        span.className = "badge s-" + r.status; span.textContent = r.status;
      } else if (c === "sweep") {
        td.textContent = "";
        if (r.sweep_id) td.appendChild(link("/compare?sweep=" + encodeURIComponent(r.sweep_id), r.sweep_id));
        else td.textContent = "-";
      } else if (td.textContent !== values[c]) { td.textContent = values[c]; }
    });
  }

  function update(rows) {
    var seen = {};
    rows.forEach(function (r, i) {
      seen[r.id] = true;
      var tr = body.querySelector('tr[data-job="' + CSS.escape(r.id) + '"]');
      if (!tr) { tr = document.createElement("tr"); tr.setAttribute("data-job", r.id); }
      fill(tr, r);
      if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null);
    });
    Array.prototype.slice.call(body.rows).forEach(function (tr) { if (!seen[tr.getAttribute("data-job")]) tr.remove(); });
    if (empty) empty.hidden = rows.length > 0;
    if (window.gpujobJobsTools) window.gpujobJobsTools.apply();  // the user's sort, search and picks (jobs_tools.js)
  }

  function poll() {
    fetch(table.getAttribute("data-live"), { credentials: "same-origin" })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (data) { if (data) update(data.jobs); })
      .catch(function () {})
      .then(function () { setTimeout(poll, 1500); });
  }
  setTimeout(poll, 1500);
})();
