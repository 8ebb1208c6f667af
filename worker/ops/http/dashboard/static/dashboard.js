// Refreshes the live parts of a dashboard page in place, every data-refresh seconds, while the
// tab is visible. The page is fetched again from the server, which renders it (and escapes
// every value); elements marked data-live are swapped for their new versions by id. Nothing
// here builds markup from data.
(function () {
  "use strict";
  var seconds = Number(document.body.dataset.refresh || 0);
  if (!seconds) return;
  var status = document.getElementById("live-status");
  var toggle = document.getElementById("live-toggle");
  var paused = false;
  var stopped = false;
  var busy = false;

  function say(text) {
    if (status) status.textContent = text;
  }

  async function refresh() {
    if (paused || stopped || busy || document.hidden) return;
    busy = true;
    try {
      var response = await fetch(location.href, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { "X-Dashboard-Refresh": "1" },
      });
      if (response.redirected || response.status === 401) {
        stopped = true;
        say("Session ended: reload the page to log in again.");
        return;
      }
      if (!response.ok) {
        say("Refresh failed (HTTP " + response.status + "); trying again.");
        return;
      }
      var fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      fresh.querySelectorAll("[data-live]").forEach(function (part) {
        var current = document.getElementById(part.id);
        if (current) current.replaceWith(document.importNode(part, true));
      });
      say("Updated " + new Date().toLocaleTimeString() + "; refreshes every " + seconds + " s");
    } catch (error) {
      say("Refresh failed (" + error + "); trying again.");
    } finally {
      busy = false;
    }
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      say(paused ? "Paused" : "Resumed");
    });
  }
  document.addEventListener("visibilitychange", refresh);
  setInterval(refresh, seconds * 1000);
})();
