// driftgate status page: live updates by server-sent events, no reload. The server renders the
// HTML; this only swaps in what the events carry. Without JavaScript the page still works
// (forms post, links load), it just does not move on its own.
(function () {
  "use strict";
  const body = document.body;
  const mode = body.dataset.mode;
  const here = body.dataset.channel || "";
  const live = document.getElementById("live");
  const meta = document.querySelector('meta[name="csrf"]');

  // Forms replaced by an event carry no CSRF token: give them this page's before they post.
  document.addEventListener("submit", function (event) {
    const field = event.target.querySelector('input[name="csrf"]');
    if (field && !field.value && meta) field.value = meta.content;
  });

  function setValues(values) {
    for (const [name, v] of Object.entries(values)) {
      const selector = '[data-channel="' + CSS.escape(name) + '"]';
      for (const card of document.querySelectorAll(selector)) {
        if (card === body) continue;
        const [text, state, word, age] = v;
        card.classList.remove("st-ok", "st-warn", "st-alarm", "st-nodata");
        card.classList.add("st-" + state);
        const value = card.querySelector(".value");
        if (value) value.textContent = text;
        const badge = card.querySelector(".state");
        if (badge) {
          badge.className = "state st-" + state;
          badge.textContent = word;
        }
        const when = card.querySelector(".age");
        if (when) when.textContent = age;
      }
    }
  }

  const source = new EventSource("/events" + (mode === "kiosk" ? "?kiosk=1" : ""));
  source.addEventListener("open", function () {
    if (live) { live.classList.remove("lost"); live.textContent = "live"; }
  });
  source.addEventListener("error", function () {
    if (live) { live.classList.add("lost"); live.textContent = "reconnecting…"; }
  });
  source.addEventListener("values", function (e) { setValues(JSON.parse(e.data)); });
  source.addEventListener("incidents", function (e) {
    const box = document.getElementById("incidents");
    if (box) box.innerHTML = e.data;
  });
  source.addEventListener("notice", function (e) {
    if (here && JSON.parse(e.data).indexOf(here) >= 0) location.reload();
  });
  source.addEventListener("health", function (e) {
    const parts = JSON.parse(e.data);
    const summary = document.getElementById("summary");
    if (summary && parts.summary !== undefined) summary.innerHTML = parts.summary;
    const health = document.getElementById("health");
    if (health && parts.health !== undefined) health.innerHTML = parts.health;
  });
  source.addEventListener("sparks", function (e) {
    if (mode === "channel") return;
    for (const [name, svg] of Object.entries(JSON.parse(e.data))) {
      const card = document.querySelector('.card[data-channel="' + CSS.escape(name) + '"]');
      const old = card && card.querySelector("svg.spark");
      if (old) old.outerHTML = svg;
    }
  });
  source.addEventListener("reload", function () { location.reload(); });
})();
