/* OTA dashboards: sortable tables, live counts, and uPlot charts. No inline scripts (the CSP forbids them).
 *
 * Numbers carry their raw value in data-value; tables sort on it, and live refresh replaces the text
 * of every [data-live=key] element (and the width of [data-live-bar=key] bar segments) with what
 * /dashboard/live.json says now.
 */
(function () {
  "use strict";
  const body = document.body;
  const base = body.dataset.base || "";
  const refreshMs = parseInt(body.dataset.refreshMs || "5000", 10);

  /* ---- sortable tables: click or Enter/Space on a column header button ---- */
  function cellKey(row, index) {
    const cell = row.children[index];
    if (!cell) return "";
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    const n = Number(raw);
    return raw !== "" && !Number.isNaN(n) ? n : raw.toLowerCase();
  }

  function sortBy(table, th) {
    const index = Array.prototype.indexOf.call(th.parentNode.children, th);
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    th.parentNode.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const tbody = table.tBodies[0];
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = cellKey(a, index), y = cellKey(b, index);
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? c : -c;
    });
    rows.forEach((r) => tbody.appendChild(r));
  }

  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("thead th").forEach((th) => {
      const button = th.querySelector("button.sort");
      if (button) button.addEventListener("click", () => sortBy(table, th));
    });
  });

  /* ---- human-readable numbers (same rules as server/dashboard/format.py) ---- */
  function humanBytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let v = Number(n), u = 0;
    while (Math.abs(v) >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    if (u === 0) return Math.round(v) + " B";
    return (Math.abs(v) < 100 ? v.toFixed(1) : v.toFixed(0)) + " " + units[u];
  }

  /* ---- live refresh ---- */
  const status = document.getElementById("live-status");
  const banner = document.getElementById("live-banner");

  function apply(values) {
    document.querySelectorAll("[data-live]").forEach((el) => {
      const v = values[el.dataset.live];
      if (!v) return;
      if (el.textContent !== v.text) {
        el.textContent = v.text;
        if (el.classList.contains("badge")) el.className = "badge b-" + v.value;
      }
      el.dataset.value = v.value;
      const cell = el.closest("td");
      if (cell && cell.dataset.value !== undefined && cell.children.length === 1) cell.dataset.value = v.value;
    });
    document.querySelectorAll("[data-live-bar]").forEach((el) => {
      const v = values[el.dataset.liveBar];
      if (v && v.pct !== null && v.pct !== undefined) el.style.width = v.pct + "%";
    });
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const r = await fetch(base + "/live.json", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401) {
        banner.hidden = false;
        banner.innerHTML = "";
        banner.append("Your dashboard session has expired. ");
        const a = document.createElement("a");
        a.href = base + "/login?next=" + encodeURIComponent(location.pathname);
        a.textContent = "Log in again";
        banner.append(a);
        stop();
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      apply((await r.json()).values);
      if (status) {
        status.textContent = "live · " + new Date().toLocaleTimeString();
        status.classList.remove("stale");
      }
    } catch (e) {
      if (status) {
        status.textContent = "reconnecting…";
        status.classList.add("stale");
      }
    }
  }

  let timer = null;
  function stop() { if (timer) clearInterval(timer); timer = null; }
  if (status) {
    timer = setInterval(refresh, refreshMs);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  }

  /* ---- charts (uPlot, vendored in /static) ---- */
  const css = getComputedStyle(document.documentElement);
  const palette = ["#2463eb", "#1f9d55", "#e89b1c", "#d64545", "#6a5ae0", "#0f9fb5", "#9aa5b1", "#b83280"];
  function colorFor(name, i) {
    const v = css.getPropertyValue("--st-" + name).trim();
    return v || palette[i % palette.length];
  }

  function markersPlugin(markers) {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx, px = devicePixelRatio;
          ctx.save();
          ctx.font = 11 * px + "px system-ui, sans-serif";
          markers.forEach((m, i) => {
            const x = Math.round(u.valToPos(m.x, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.strokeStyle = "#52606d";
            ctx.setLineDash([4 * px, 4 * px]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            const label = m.label, w = ctx.measureText(label).width, y = u.bbox.top + (14 + 14 * (i % 3)) * px;
            ctx.fillStyle = "rgba(255,255,255,.85)";
            ctx.fillRect(x + 3 * px, y - 11 * px, w + 4 * px, 14 * px);
            ctx.fillStyle = "#1f2933";
            ctx.fillText(label, x + 5 * px, y);
          });
          ctx.restore();
        }],
      },
    };
  }

  /* Gate thresholds: a dashed horizontal line per gate, labelled at its right end. */
  function thresholdsPlugin(lines) {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx, px = devicePixelRatio;
          ctx.save();
          ctx.font = 11 * px + "px system-ui, sans-serif";
          lines.forEach((t) => {
            const y = Math.round(u.valToPos(t.value, "y", true));
            if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) return;
            ctx.strokeStyle = "#d64545";
            ctx.setLineDash([6 * px, 4 * px]);
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
            const w = ctx.measureText(t.label).width, x = u.bbox.left + u.bbox.width - w - 6 * px;
            ctx.fillStyle = "rgba(255,255,255,.85)";
            ctx.fillRect(x - 2 * px, y - 13 * px, w + 4 * px, 12 * px);
            ctx.fillStyle = "#b42318";
            ctx.fillText(t.label, x, y - 3 * px);
          });
          ctx.restore();
        }],
      },
    };
  }

  /* Bars over categories (the class-distribution chart): x is the class index, its label on the axis. */
  function drawBars(box, spec) {
    const s = spec.series, names = s.bars, n = s.names.length;
    const series = [{}].concat(s.names.map((name, i) => ({
      label: name, stroke: colorFor(name, i), fill: colorFor(name, i) + "99", width: 1, points: { show: false },
      // two series side by side: the first left of its class, the second right of it
      paths: uPlot.paths.bars({ size: [0.8 / n, 60], align: n === 2 ? (i === 0 ? -1 : 1) : 0, gap: 1 }),
    })));
    const opts = {
      width: Math.max(260, box.clientWidth), height: parseInt(box.dataset.height || "240", 10), series,
      legend: { live: true },
      scales: { x: { time: false, range: () => [-0.6, names.length - 0.4] },
                y: { range: (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } },
      axes: [{ stroke: "#52606d", grid: { show: false }, splits: () => names.map((_, i) => i),
               values: (u, vals) => vals.map((v) => names[v] || ""), rotate: -30, size: 70 },
             { stroke: "#52606d", grid: { stroke: "#eef1f5" }, size: 50 }],
    };
    const plot = new uPlot(opts, s.data, box);
    new ResizeObserver(() => plot.setSize({ width: Math.max(260, box.clientWidth), height: opts.height })).observe(box);
  }

  /* Stacked series: cumulative sums drawn top-down with opaque fills, raw values in the legend. */
  function stack(names, raw) {
    const cum = [];
    raw.forEach((col, i) => cum.push(col.map((v, j) => v + (i ? cum[i - 1][j] : 0))));
    const order = names.map((_, i) => i).reverse();
    return { order, data: order.map((i) => cum[i]) };
  }

  /* Ratios (agreement, latency ratio, class shift): keep the data and every gate line in view. */
  function ratioRange(lines) {
    return (u, min, max) => {
      const vals = lines.map((t) => t.value).concat([min, max]).filter((v) => v !== null && Number.isFinite(v));
      const lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals), pad = Math.max(0.01, (hi - lo) * 0.15);
      return [Math.max(0, lo - pad), hi + pad];
    };
  }

  function drawChart(box) {
    const spec = JSON.parse(document.getElementById(box.dataset.chart).textContent);
    const s = spec.series;
    if (s.bars) return drawBars(box, spec);
    const isRatio = s.unit === "ratio";
    const isBytes = s.unit === "bytes";
    let xs = s.data[0], raw = s.data.slice(1);
    if (xs.length === 1) {  // one point: widen to a flat step so it is visible
      xs = [xs[0] - 30, xs[0] + 30];
      raw = raw.map((col) => [col[0], col[0]]);
    }
    const order = s.stacked ? stack(s.names, raw).order : s.names.map((_, i) => i);
    const ys = s.stacked ? stack(s.names, raw).data : raw;
    const fmt = (v) => (v === null || v === undefined ? "—" : isBytes ? humanBytes(v) : v);
    const series = [{}].concat(order.map((i) => ({
      label: s.names[i].replace("_", " "), stroke: colorFor(s.names[i], i), width: s.stacked ? 1 : 2,
      fill: s.stacked ? colorFor(s.names[i], i) : undefined,
      paths: s.linear ? uPlot.paths.linear() : uPlot.paths.stepped({ align: 1 }), points: { show: !!s.linear },
      spanGaps: !!s.linear,
      value: (u, v, sidx, didx) => fmt(didx === null || didx === undefined ? null : raw[i][didx]),
    })));
    const opts = {
      width: Math.max(260, box.clientWidth), height: parseInt(box.dataset.height || "240", 10),
      series, legend: { live: true },
      scales: {
        x: { time: true, range: (u, min, max) => (max - min < 60 ? [max - 60, max] : [min, max]) },
        y: { range: isRatio ? ratioRange(spec.thresholds || []) : (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] },
      },
      axes: [{ stroke: "#52606d", grid: { stroke: "#eef1f5" } },
             { stroke: "#52606d", grid: { stroke: "#eef1f5" }, size: isBytes ? 70 : 50,
               incrs: isBytes || isRatio ? undefined : [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000],
               values: (u, vals) => vals.map((v) => (isBytes ? humanBytes(v) : v)) }],
      plugins: (spec.markers ? [markersPlugin(spec.markers)] : []).concat(
        spec.thresholds && spec.thresholds.length ? [thresholdsPlugin(spec.thresholds)] : []),
    };
    const plot = new uPlot(opts, [xs].concat(ys), box);
    new ResizeObserver(() => plot.setSize({ width: Math.max(260, box.clientWidth), height: opts.height })).observe(box);
  }

  if (window.uPlot) document.querySelectorAll("[data-chart]").forEach(drawChart);
})();
