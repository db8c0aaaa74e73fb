// The dev inbox's only script: keep the list current, confirm "Clear". No build step.
"use strict";

(function () {
  const POLL_MS = 2000;
  const list = document.getElementById("list");
  const budgets = document.getElementById("budgets");

  // Poll the JSON API; when the set of messages changed, fetch the server-rendered list.
  async function refresh() {
    try {
      const response = await fetch("/api/messages", { cache: "no-store" });
      const data = await response.json();
      const ids = data.messages.map((m) => m.id).join(",");
      document.body.classList.remove("offline");
      if (budgets) {
        const meters = await fetch("/?fragment=budgets", { cache: "no-store" });
        budgets.innerHTML = await meters.text();
      }
      if (ids === list.dataset.ids) return;
      const fragment = await fetch("/?fragment=list", { cache: "no-store" });
      list.innerHTML = await fragment.text();
      list.dataset.ids = ids;
      document.title = "Inbox (" + data.count + ")";
    } catch (error) {
      document.body.classList.add("offline");
    }
  }

  if (list) setInterval(refresh, POLL_MS);

  for (const form of document.querySelectorAll("form.clear")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm("Delete every captured message?")) event.preventDefault();
    });
  }
})();
