/*
 * snh-stop-notice: JupyterLab shows the notebook hub's warning before this server is
 * stopped (an idle cull or a spent budget), with a Keep running button.
 *
 * A prebuilt JupyterLab extension written by hand, so the images need no Node build: it is
 * a module-federation container as JupyterLab loads one (window._JUPYTERLAB[name] with
 * init() and get("./extension"), as @jupyterlab/builder emits), and it imports nothing
 * from JupyterLab's shared modules. It uses the application's command registry only, and
 * JupyterLab's own notification commands (apputils:notify, apputils:dismiss-notification,
 * JupyterLab 4).
 *
 * It asks this notebook server (images/shared/notebook_stop_notice.py), which asks the hub
 * with the server's own token: GET snh/stop-notice (every poll_seconds), and POST
 * snh/keep-running from the button. Both with the page's XSRF cookie, as JupyterLab's own
 * requests.
 */
(function () {
  "use strict";

  var NAME = "snh-stop-notice";
  var KEEP = "snh-stop-notice:keep-running";

  function cookie(name) {
    var match = document.cookie.match("\\b" + name + "=([^;]*)\\b");
    return match ? match[1] : "";
  }

  function activate(app) {
    var settings = app.serviceManager.serverSettings;
    var shown = null; // {key, id}: the notification on screen (id once JupyterLab gave it)
    var timer = null;
    var asking = false; // one question at a time
    var wanted = 0; // questions asked for: an answer to an older one is not shown
    var pollMs = 60000;

    function request(method, path) {
      var headers = {};
      var xsrf = cookie("_xsrf");
      if (xsrf) {
        headers["X-XSRFToken"] = decodeURIComponent(xsrf);
      }
      return fetch(settings.baseUrl + path, {
        method: method,
        credentials: "same-origin",
        headers: headers
      }).then(function (response) {
        return response.json().then(
          function (body) {
            return { ok: response.ok, body: body };
          },
          function () {
            return { ok: false, body: { message: "HTTP " + response.status } };
          }
        );
      });
    }

    function notify(message, type, options) {
      return app.commands.execute("apputils:notify", {
        message: message,
        type: type,
        options: options
      });
    }

    function dismiss() {
      if (shown === null) {
        return;
      }
      var leaving = shown;
      shown = null;
      leaving.ready.then(function (id) {
        app.commands.execute("apputils:dismiss-notification", { id: id });
      });
    }

    function show(notice) {
      var key = notice ? notice.kind + " " + notice.stop_at : null;
      if (shown !== null && shown.key === key) {
        return;
      }
      dismiss();
      if (!notice) {
        return;
      }
      var actions = notice.can_keep_running
        ? [{ label: "Keep running", commandId: KEEP, args: {}, caption: notice.text }]
        : [];
      shown = {
        key: key,
        ready: notify(notice.short, "warning", { autoClose: false, actions: actions })
      };
    }

    function look() {
      wanted += 1;
      if (asking) {
        return; // the answer in flight is stale now: it asks again when it comes
      }
      asking = true;
      clearTimeout(timer);
      var mine = wanted;
      request("GET", "snh/stop-notice")
        .then(function (answer) {
          if (answer.ok && mine === wanted) {
            pollMs = Math.max(1, answer.body.poll_seconds || 60) * 1000;
            show(answer.body.notice);
          }
        })
        .catch(function () {
          /* the server is on its way down, or the network is: ask again later */
        })
        .then(function () {
          asking = false;
          if (mine !== wanted) {
            look();
          } else {
            timer = setTimeout(look, pollMs);
          }
        });
    }

    app.commands.addCommand(KEEP, {
      label: "Keep running",
      caption: "Keep this server from being stopped as idle (the hub records it as activity)",
      execute: function () {
        return request("POST", "snh/keep-running").then(function (answer) {
          dismiss();
          if (answer.ok) {
            notify("Kept running: the hub counts this as activity.", "success", {
              autoClose: 5000
            });
          } else {
            notify(answer.body.message || "The hub refused.", "error", { autoClose: false });
          }
          look();
        });
      }
    });

    app.restored.then(look);
  }

  var plugin = {
    id: NAME + ":plugin",
    description: "The notebook hub's warning before this server is stopped.",
    autoStart: true,
    activate: activate
  };

  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = {
    init: function () {
      return Promise.resolve();
    },
    get: function (module) {
      if (module !== "./extension") {
        return Promise.reject(new Error(NAME + " has no module " + module));
      }
      return Promise.resolve(function () {
        return { __esModule: true, default: plugin };
      });
    }
  };
})();
