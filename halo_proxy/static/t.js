/* HaloTrack t.js: the page side of a server-side attribution proxy. No third-party requests, no cookies of its
   own, ES2019 at most. Behind the proxy it asks /session for the visitor's public session id (the _halo cookie is
   HttpOnly and never read here); on a site not behind the proxy it reports the visit to /touch and keeps the id it
   gets back. It fills halo_session_id into the site's POST forms, reports consent banner changes (CookieYes,
   Cookiebot, OneTrust) to /consent, and sends identify and track calls, including those queued before it loaded
   (window.HaloTrack = {q: [[method, args], ...]}). */
(function (w, d) {
  "use strict";
  var prior = w.HaloTrack || {};
  if (prior.loaded) return;
  var me = d.currentScript || d.querySelector('script[src*="/t.js"]');
  var src = new URL(me && me.src ? me.src : "/_halo/t.js", location.href);
  var base = src.origin + src.pathname.replace(/\/t\.js$/, "");
  var external = src.origin !== location.origin;
  var KEY = "halo_sid", CKEY = "halo_consent", FIELD = "halo_session_id";
  var sid = null, known = null, groups = {analytics: ["C0002"], marketing: ["C0004"]};
  var done, started = new Promise(function (resolve) { done = resolve; });

  function store(name, value) {
    try {
      if (value === undefined) return w.localStorage.getItem(name);
      if (value === null) w.localStorage.removeItem(name); else w.localStorage.setItem(name, value);
    } catch (e) { return null; }
    return null;
  }

  function send(path, body, keepalive) {
    // text/plain JSON: a simple request, so a site not behind the proxy needs no preflight
    return fetch(base + path, {method: body ? "POST" : "GET", credentials: "same-origin", cache: "no-store",
      keepalive: !!keepalive, headers: body ? {"Content-Type": "text/plain;charset=UTF-8"} : {},
      body: body ? JSON.stringify(body) : undefined})
      .then(function (r) { return r.ok ? r.json() : null; })
      .catch(function () { return null; });
  }

  function adopt(answer) {
    if (!answer) return;
    if ("session_id" in answer) sid = answer.session_id || null;
    if ("analytics" in answer) known = {analytics: !!answer.analytics, marketing: !!answer.marketing};
    if (answer.onetrust) groups = answer.onetrust;
    if (external) store(KEY, sid);
    refill();
  }

  function touch(consent) {
    var body = {url: location.href, referrer: d.referrer || null};
    var id = store(KEY);
    if (id) body.session_id = id;
    if (consent) body.consent = consent;
    return send("/touch", body).then(adopt);
  }

  // -- forms: a hidden halo_session_id in every POST form of this site (or of HaloTrack's host) --
  // Element methods are called from their prototypes: a form's own fields (<input name=querySelector>) shadow
  // its properties, and must not be able to switch the script off.
  var E = Element.prototype, attr = E.getAttribute, find = E.querySelector;

  function local(target) {
    var origin = new URL(target || location.href, location.href).origin;
    return origin === location.origin || origin === src.origin;
  }

  function fill() {
    var forms = d.forms;
    for (var i = 0; i < forms.length; i++) {
      var form = forms[i];
      var added = find.call(form, "input[data-halo]");
      if (!sid || (attr.call(form, "method") || "").toLowerCase() !== "post" || !local(attr.call(form, "action"))) {
        if (added) added.remove();
        continue;
      }
      if (added) { added.value = sid; continue; }
      if (find.call(form, '[name="' + FIELD + '"]')) continue;
      var input = d.createElement("input");
      input.type = "hidden";
      input.name = FIELD;
      input.value = sid;
      input.setAttribute("data-halo", "");
      Node.prototype.appendChild.call(form, input);
    }
  }

  function refill() { try { fill(); } catch (e) { /* a page's odd form never stops the script */ } }

  function submitted(e) {
    refill();
    // a button's formaction may send the form elsewhere: the id stays on this site (a disabled field is not sent)
    var button = e.submitter, form = e.target, added = form && find.call(form, "input[data-halo]");
    if (added) added.disabled = !!(button && button.hasAttribute("formaction") && !local(attr.call(button, "formaction")));
  }

  // -- consent --
  function normal(c) {
    var analytics = !!c.analytics;
    return {analytics: analytics, marketing: analytics && !!c.marketing && !navigator.globalPrivacyControl};
  }

  function consent(c) {
    return started.then(function () {
      var next = normal(c || {});
      if (known && known.analytics === next.analytics && known.marketing === next.marketing) return;
      known = next;
      if (external) {
        store(CKEY, JSON.stringify(next));
        return touch(next);
      }
      return send("/consent", {analytics: next.analytics, marketing: next.marketing, url: location.href,
        referrer: d.referrer || null}).then(adopt);
    });
  }

  function fromBanner(c, acted) { if (acted) consent(c); }

  function cookieyes(e) {
    var data = w.getCkyConsent ? w.getCkyConsent() : e && e.detail;
    if (data && data.categories) {
      fromBanner({analytics: data.categories.analytics, marketing: data.categories.advertisement},
        data.isUserActionCompleted);
    } else if (e && e.detail && e.detail.accepted) {
      var yes = e.detail.accepted;
      fromBanner({analytics: yes.indexOf("analytics") >= 0, marketing: yes.indexOf("advertisement") >= 0}, true);
    }
  }

  function cookiebot() {
    var cb = w.Cookiebot;
    if (cb && cb.consent && cb.hasResponse) {
      fromBanner({analytics: cb.consent.statistics, marketing: cb.consent.marketing}, true);
    }
  }

  function onetrust(e) {
    var active = e && e.detail ? e.detail : String(w.OnetrustActiveGroups || "").split(",");
    var ot = w.OneTrust;
    if (!active.length || !ot) return;
    var all = function (ids) { return ids.every(function (id) { return active.indexOf(id) >= 0; }); };
    fromBanner({analytics: all(groups.analytics), marketing: all(groups.marketing)},
      ot.IsAlertBoxClosed ? ot.IsAlertBoxClosed() : true);
  }

  d.addEventListener("cookieyes_consent_update", cookieyes);
  d.addEventListener("cookieyes_banner_load", cookieyes);
  ["CookiebotOnConsentReady", "CookiebotOnAccept", "CookiebotOnDecline"].forEach(function (name) {
    w.addEventListener(name, cookiebot);
  });
  w.addEventListener("OneTrustGroupsUpdated", onetrust);

  // -- the API --
  var api = {
    loaded: true,
    getSessionId: function () { return sid; },
    ready: function (fn) { return started.then(function () { if (fn) fn(sid); return sid; }); },
    consent: consent,
    identify: function (who) {
      return started.then(function () {
        if (!sid || !who) return null;
        var body = {session_id: sid};
        if (who.email) body.email = String(who.email);
        if (who.phone) body.phone = String(who.phone);
        return body.email || body.phone ? send("/identify", body, true) : null;
      });
    },
    track: function (name, props) {
      return started.then(function () {
        if (!sid) return null;
        var body = {name: String(name)};
        if (props) body.props = props;
        if (external) body.session_id = sid;
        return send("/event", body, true);
      });
    }
  };
  w.HaloTrack = api;

  var stored = null;
  try { stored = JSON.parse(store(CKEY) || "null"); } catch (e) { /* not ours */ }
  (external ? touch(stored) : send("/session").then(adopt)).catch(function () {}).then(function () {
    done();
    if (w.getCkyConsent) cookieyes();
    if (w.Cookiebot) cookiebot();
    if (w.OneTrust && w.OnetrustActiveGroups) onetrust();
  });
  if (w.MutationObserver) new MutationObserver(refill).observe(d.documentElement, {childList: true, subtree: true});
  d.addEventListener("submit", submitted, true);
  (prior.q || []).forEach(function (call) {
    if (api[call[0]]) api[call[0]].apply(api, call[1] || []);
  });
})(window, document);
