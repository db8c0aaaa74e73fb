// The dev inbox's only script: live updates over server-sent events, the faults panel,
// the "Clear" confirmation. No build step, no polling: the emulator pushes an event when a
// message arrives, a request is answered or the armed faults change, and the page fetches
// the server-rendered fragment it needs (at most a few times a second).
"use strict";

(function () {
  const list = document.getElementById("list");
  const log = document.getElementById("log");
  const budgets = document.getElementById("budgets");
  const armed = document.getElementById("armed");
  let baseTitle = document.title;
  let unseen = 0;

  // Refresh one part of the page from its fragment URL, coalescing bursts of events.
  function refresher(element, url, delay) {
    let timer = null;
    return function () {
      if (!element || timer) return;
      timer = setTimeout(async function () {
        timer = null;
        try {
          const response = await fetch(url(), { cache: "no-store" });
          element.innerHTML = await response.text();
          const total = response.headers.get("X-Inbox-Total");
          if (total !== null) {
            baseTitle = "Inbox (" + total + ")";
            showUnseen();
          }
          document.body.classList.remove("offline");
        } catch (error) {
          document.body.classList.add("offline");
        }
      }, delay);
    };
  }

  const query = function (fragment) {
    const params = new URLSearchParams(window.location.search);
    params.set("fragment", fragment);
    return "?" + params.toString();
  };
  const refreshList = refresher(list, () => "/" + query("list"), 150);
  const refreshLog = refresher(log, () => "/requests" + query("log"), 150);
  const refreshBudgets = refresher(budgets, () => "/?fragment=budgets", 500);
  const refreshArmed = refresher(armed, () => "/?fragment=faults", 50);

  function showUnseen() {
    document.title = (unseen ? "(" + unseen + " new) " : "") + baseTitle;
  }
  // "New" means arrived since the reader last came back to the page or used it.
  function seen() {
    if (document.visibilityState === "visible") {
      unseen = 0;
      showUnseen();
    }
  }

  if (window.EventSource && (list || log || armed)) {
    const events = new EventSource("/api/events");
    events.addEventListener("open", () => document.body.classList.remove("offline"));
    events.addEventListener("error", () => document.body.classList.add("offline"));
    events.addEventListener("message", function () {
      unseen += 1;
      showUnseen();
      refreshList();
    });
    events.addEventListener("request", function () {
      refreshLog();
      refreshBudgets();
    });
    events.addEventListener("faults", refreshArmed);
    events.addEventListener("reload", () => window.location.reload());
    window.addEventListener("focus", seen);
    document.addEventListener("visibilitychange", seen);
    document.addEventListener("keydown", seen);
    document.addEventListener("pointerdown", seen);
  }

  // The faults panel: the same JSON API a test suite uses.
  async function faults(method, body) {
    const response = await fetch("/api/faults", {
      method: method,
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) window.alert(answer.error);
    refreshArmed();
  }
  const arm = document.getElementById("arm");
  if (arm) {
    arm.addEventListener("submit", function (event) {
      event.preventDefault();
      const fields = new FormData(arm);
      const body = { fault: fields.get("fault") };
      if (fields.get("fault") !== "latency") body.count = Number(fields.get("count") || 1);
      if (fields.get("seconds") !== "") body.seconds = Number(fields.get("seconds"));
      faults("POST", body);
    });
  }
  document.addEventListener("click", function (event) {
    if (event.target && event.target.id === "disarm") faults("DELETE");
  });

  for (const form of document.querySelectorAll("form.clear")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm("Delete every captured message?")) event.preventDefault();
    });
  }
})();
