// convoai-ledger console: the live parts. The page says where its stream starts
// (<body data-stream="/console/stream?after=…">); events then update what the page shows:
// `pcu` events the live counts, `agent` events the states in place, and lists that take new
// agents (<tbody data-live-rows="…">) are fetched again from the server, which renders them.
"use strict";

(function () {
  const body = document.body;
  const streamUrl = body.dataset.stream;
  if (!streamUrl || typeof EventSource === "undefined") {
    return;
  }
  const indicator = document.getElementById("live");
  let source = null;
  let lastId = null;
  let retryMs = 1000;
  let refreshTimer = null;

  function setLive(state, text) {
    if (indicator) {
      indicator.dataset.live = state;
      indicator.textContent = text;
    }
  }

  function url() {
    // Reconnecting by hand (after an error EventSource gives up on) resumes after the last event.
    if (!lastId) {
      return streamUrl;
    }
    const next = new URL(streamUrl, window.location.href);
    next.searchParams.set("after", lastId);
    return next.pathname + next.search;
  }

  function connect() {
    source = new EventSource(url());
    source.onopen = function () {
      retryMs = 1000;
      setLive("on", "live");
    };
    source.onerror = function () {
      setLive("off", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        window.setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 30000);
      }
    };
    source.addEventListener("agent", function (message) {
      lastId = message.lastEventId;
      onAgent(JSON.parse(message.data));
    });
    source.addEventListener("pcu", function (message) {
      lastId = message.lastEventId;
      onPcu(JSON.parse(message.data));
    });
  }

  function sameAgent(element, event) {
    return element.dataset.appId === event.app_id && element.dataset.agentId === event.agent_id;
  }

  function showState(element, state) {
    element.textContent = state;
    element.className = element.className.replace(/\bstate-\w+/, "state-" + state.toLowerCase());
  }

  function onAgent(event) {
    document.querySelectorAll("tr[data-agent-id]").forEach(function (row) {
      if (sameAgent(row, event)) {
        const cell = row.querySelector("[data-state]");
        if (cell) {
          showState(cell, event.state);
        }
      }
    });
    document.querySelectorAll("[data-agent-state]").forEach(function (badge) {
      if (sameAgent(badge, event)) {
        showState(badge, event.state);
        const notice = document.querySelector("[data-agent-changed]");
        if (notice) {
          notice.hidden = false;
        }
      }
    });
    scheduleRefresh();
  }

  function onPcu(event) {
    document.querySelectorAll("[data-pcu-app]").forEach(function (card) {
      if (card.dataset.pcuApp !== event.app_id) {
        return;
      }
      const cap = event.cap || Number(card.dataset.pcuCap) || 1;
      const share = event.current / cap;
      const warn = Number(card.dataset.pcuWarn) || 0.8;
      setText(card, "[data-pcu-current]", String(event.current));
      setText(card, "[data-pcu-available]", String(Math.max(cap - event.current, 0)));
      setText(card, "[data-pcu-percent]", String(Math.round(share * 100)));
      const bar = card.querySelector("[data-pcu-bar]");
      if (bar) {
        bar.setAttribute("width", String(Math.min(100, share * 100).toFixed(1)));
        const level = share >= 1 ? "full" : share >= warn ? "warn" : "ok";
        bar.setAttribute("class", "fill level-" + level);
      }
    });
  }

  function setText(root, selector, text) {
    const element = root.querySelector(selector);
    if (element) {
      element.textContent = text;
    }
  }

  // Bursts of events cause one fetch per list, at most every 300 ms.
  function scheduleRefresh() {
    if (refreshTimer === null) {
      refreshTimer = window.setTimeout(function () {
        refreshTimer = null;
        document.querySelectorAll("tbody[data-live-rows]").forEach(refreshRows);
      }, 300);
    }
  }

  function refreshRows(tbody) {
    const before = new Set();
    tbody.querySelectorAll("tr[data-agent-id]").forEach(function (row) {
      before.add(row.dataset.appId + "\u0000" + row.dataset.agentId);
    });
    fetch(tbody.dataset.liveRows, { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.text() : Promise.reject(response.status);
      })
      .then(function (html) {
        // Rendered (and escaped) by the server from the same template as the page.
        tbody.innerHTML = html;
        tbody.querySelectorAll("tr[data-agent-id]").forEach(function (row) {
          if (!before.has(row.dataset.appId + "\u0000" + row.dataset.agentId)) {
            row.classList.add("fresh");
          }
        });
      })
      .catch(function () {
        setLive("off", "reconnecting…");
      });
  }

  connect();
})();
