/* txmodcluster console: auto refresh without reloading the page.
 *
 * Loaded only when auto refresh is on (?refresh=N).  Every N seconds it asks
 * the console's own <path>/update (same filter, same page) for the live
 * numbers of what is shown, with the ETag of the last answer: an unchanged view
 * costs a 304 and no DOM work.  It rewrites only the numbers that differ; when
 * the structure changed (nodes, contexts, context states) or a shown node
 * changed state, it reloads the page instead, which is bounded too.
 * No framework, no inline code (the CSP allows only this file).
 */
(function () {
  "use strict";
  var body = document.body;
  var period = parseInt(body.getAttribute("data-refresh"), 10);
  var url = body.getAttribute("data-update");
  if (!period || period < 1 || !url || !window.fetch) {
    return;
  }
  var structure = body.getAttribute("data-structure");
  var ids = body.getAttribute("data-ids");
  var live = document.querySelector("[data-live]");
  var etag = null;
  var busy = false;

  function setText(el, value) {
    if (el && el.textContent !== value) {
      el.textContent = value;
    }
  }

  function stateOf(el) {
    var m = /(?:^|\s)state-([a-z-]+)/.exec(el.className);
    return m ? m[1] : "";
  }

  function apply(data) {
    if (data.structure !== structure || data.ids.join(",") !== ids) {
      window.location.reload();
      return;
    }
    var key, id, node, root, f, ctx, row;
    for (key in data.counts) {
      setText(document.querySelector('[data-count="' + key + '"]'), String(data.counts[key]));
    }
    for (id in data.nodes) {
      node = data.nodes[id];
      root = document.getElementById("node-" + id);
      if (!root) {
        continue;
      }
      if (stateOf(root) !== node.state.replace(/_/g, "-")) {
        window.location.reload();
        return;
      }
      for (f in node.f) {
        setText(root.querySelector('[data-f="' + f + '"]'), node.f[f]);
      }
      for (ctx in node.ctx || {}) {
        row = document.getElementById("ctx-" + ctx);
        if (row) {
          setText(row.querySelector('[data-f="in_flight"]'), node.ctx[ctx].in_flight);
          setText(row.querySelector('[data-f="requests"]'), node.ctx[ctx].requests);
        }
      }
    }
  }

  function tick() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    var headers = {"Accept": "application/json"};
    if (etag) {
      headers["If-None-Match"] = etag;
    }
    fetch(url, {headers: headers, credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (response.status === 304) {
          return null;
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        etag = response.headers.get("ETag");
        return response.json();
      })
      .then(function (data) {
        if (data) {
          apply(data);
        }
        if (live) {
          live.title = "updated " + new Date().toLocaleTimeString();
          live.classList.remove("stale");
        }
      })
      .catch(function () {
        if (live) {
          live.classList.add("stale");
        }
      })
      .then(function () {
        busy = false;
      });
  }

  window.setInterval(tick, period * 1000);
})();
