// tokendesk analytics page: the usage chart (Chart.js, from the JSON the server
// embeds next to it) and the custom-range fields. The server renders everything else.
(function () {
  "use strict";

  // Distinct at a glance and still readable for the common colour-vision deficiencies.
  const PALETTE = [
    "#3b5bdb", "#f08c00", "#2f9e44", "#c2255c", "#1098ad",
    "#7048e8", "#e8590c", "#5c940d", "#868e96",
  ];
  const OTHER = "#adb5bd";
  const fmt = (n) => Number(n).toLocaleString("en-US");
  let chart = null;

  function shortDay(iso) {
    const [y, m, d] = iso.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString("en-GB", {
      day: "numeric", month: "short", timeZone: "UTC",
    });
  }

  function draw() {
    const canvas = document.getElementById("usage-chart");
    const source = document.getElementById("usage-chart-data");
    if (chart) {
      chart.destroy();
      chart = null;
    }
    if (!canvas || !source || typeof window.Chart === "undefined") return;
    const data = JSON.parse(source.textContent);
    const datasets = data.series.map((series, index) => ({
      label: series.label,
      data: series.tokens,
      backgroundColor: series.key === "other" ? OTHER : PALETTE[index % PALETTE.length],
      borderWidth: 0,
      stack: "usage",
    }));
    chart = new window.Chart(canvas, {
      type: "bar",
      data: { labels: data.days.map(shortDay), datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: window.matchMedia("(prefers-reduced-motion: reduce)").matches ? false : { duration: 250 },
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { stacked: true, grid: { display: false }, ticks: { autoSkip: true, maxRotation: 0 } },
          y: {
            stacked: true,
            beginAtZero: true,
            ticks: {
              callback: (value) => Intl.NumberFormat("en-US", { notation: "compact" }).format(value),
            },
          },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: {
            callbacks: {
              title: (items) => items.length ? data.days[items[0].dataIndex] : "",
              label: (item) => " " + item.dataset.label + ": " + fmt(item.raw),
              footer: (items) => items.length ? "Total: " + fmt(data.totals[items[0].dataIndex]) : "",
            },
          },
        },
      },
    });
    // Lets a test (or a curious admin) check what is drawn without reading pixels.
    canvas.dataset.total = String(data.totals.reduce((a, b) => a + b, 0));
    canvas.dataset.series = String(datasets.length);
    canvas.dataset.days = String(data.days.length);
    canvas.dataset.drawn = "1";
  }

  function dates() {
    return document.getElementById("analytics-dates");
  }

  function syncDates() {
    const period = document.getElementById("analytics-period");
    const box = dates();
    if (!period || !box) return;
    const custom = period.value === "custom";
    box.hidden = !custom;
    for (const input of box.querySelectorAll("input")) input.disabled = !custom;
  }

  function customIncomplete() {
    const period = document.getElementById("analytics-period");
    if (!period || period.value !== "custom") return false;
    const from = document.getElementById("analytics-from");
    const to = document.getElementById("analytics-to");
    return !from.value || !to.value;
  }

  document.addEventListener("change", (event) => {
    if (event.target && event.target.id === "analytics-period") {
      syncDates();
      if (event.target.value === "custom" && customIncomplete()) {
        document.getElementById("analytics-from").focus();
      }
    }
  });

  // A custom range waits for both dates before the page reloads.
  document.addEventListener("htmx:confirm", (event) => {
    if (event.target && event.target.id === "analytics-filters" && customIncomplete()) {
      event.preventDefault();
    }
  });

  // A swapped-in body brings a fresh canvas; other swaps (the badge) leave it be.
  document.addEventListener("htmx:afterSettle", () => {
    const canvas = document.getElementById("usage-chart");
    if (canvas && !canvas.dataset.drawn) draw();
  });
  // Back and forward restore the page's HTML; the canvas needs drawing again.
  document.addEventListener("htmx:historyRestore", () => {
    syncDates();
    draw();
  });

  function start() {
    syncDates();
    draw();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
