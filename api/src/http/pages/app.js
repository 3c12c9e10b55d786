// Queue's hosted pages: /login, /account, /recover (ADR 0209).
// No framework, no build step, nothing from other origins. The access token
// lives in `access` only (memory); the refresh token is an HttpOnly cookie
// the server sets and reads for requests carrying `X-Queue-Page: 1`.
'use strict';

(() => {
  const API = '/api/v1/auth';
  let access = null;

  const $ = (selector) => document.querySelector(selector);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ---- messages -------------------------------------------------------

  // #error is a live region that is always in the page (empty when there
  // is nothing to say), so screen readers announce each new message.
  function showError(err) {
    const box = $('#error');
    if (box) box.textContent = describe(err);
  }

  function clearError() {
    const box = $('#error');
    if (box) box.textContent = '';
  }

  function say(text) {
    const status = $('#status');
    if (status) status.textContent = text;
  }

  function describe(err) {
    if (err instanceof ApiError) {
      switch (err.code) {
        case 'last_credential':
          return 'This is your last passkey. Add another passkey or create backup codes before deleting it.';
        case 'email_taken':
          return 'That email already has an account. Sign in instead.';
        case 'invalid_code':
          return 'That email and backup code do not match, or the code was used already.';
        case 'webauthn_failed':
          return 'The passkey could not be verified. Try again or use another passkey.';
        case 'challenge_expired':
          return 'That took too long. Please try again.';
        case 'rate_limited':
        case 'overloaded':
          return 'Too many attempts. Wait a moment and try again.';
        default:
          return err.message || 'Something went wrong (' + err.code + ').';
      }
    }
    if (err && err.name === 'NotAllowedError') {
      return 'The passkey prompt was cancelled or timed out.';
    }
    if (err && err.name === 'InvalidStateError') {
      return 'This device already holds a passkey for this account.';
    }
    return (err && err.message) || String(err);
  }

  // ---- HTTP ------------------------------------------------------------

  async function request(method, path, body) {
    const headers = { 'X-Queue-Page': '1', Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (access) headers.Authorization = 'Bearer ' + access;
    const res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'error',
    });
    let data = null;
    if (res.status !== 204) {
      try {
        data = await res.json();
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(res.status, e.code || 'http_' + res.status, e.message || res.statusText);
    }
    return data;
  }

  // Refreshes through the HttpOnly cookie; true when a session is back.
  async function refresh() {
    try {
      const tokens = await request('POST', API + '/session/refresh', {});
      access = tokens.access_token;
      return true;
    } catch (_) {
      access = null;
      return false;
    }
  }

  // An authenticated call: refreshes once on an expired access token, and
  // runs the step-up ceremony then retries once on 401 reauth_required.
  async function call(method, path, body) {
    try {
      return await request(method, path, body);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      if (err.code === 'reauth_required') {
        await reauthenticate();
        return request(method, path, body);
      }
      if (err.code === 'unauthorized' && (await refresh())) {
        return request(method, path, body);
      }
      throw err;
    }
  }

  // ---- WebAuthn JSON -----------------------------------------------------

  function toBase64url(buffer) {
    const bytes = new Uint8Array(buffer);
    let binary = '';
    for (let i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function fromBase64url(text) {
    const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  // The server's JSON may carry nulls for absent members; WebIDL wants them absent.
  function withoutNulls(value) {
    if (Array.isArray(value)) return value.map(withoutNulls);
    if (value && typeof value === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(value)) {
        if (v !== null && v !== undefined) out[k] = withoutNulls(v);
      }
      return out;
    }
    return value;
  }

  function withIds(list) {
    return (list || []).map((c) => Object.assign({}, c, { id: fromBase64url(c.id) }));
  }

  function creationOptions(json) {
    const opts = withoutNulls(json);
    if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === 'function') {
      return PublicKeyCredential.parseCreationOptionsFromJSON(opts);
    }
    return Object.assign({}, opts, {
      challenge: fromBase64url(opts.challenge),
      user: Object.assign({}, opts.user, { id: fromBase64url(opts.user.id) }),
      excludeCredentials: withIds(opts.excludeCredentials),
    });
  }

  function requestOptions(json) {
    const opts = withoutNulls(json);
    if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === 'function') {
      return PublicKeyCredential.parseRequestOptionsFromJSON(opts);
    }
    return Object.assign({}, opts, {
      challenge: fromBase64url(opts.challenge),
      allowCredentials: withIds(opts.allowCredentials),
    });
  }

  function credentialJSON(cred) {
    if (typeof cred.toJSON === 'function') return cred.toJSON();
    const r = cred.response;
    const response = { clientDataJSON: toBase64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toBase64url(r.attestationObject);
      if (typeof r.getTransports === 'function') response.transports = r.getTransports();
    } else {
      response.authenticatorData = toBase64url(r.authenticatorData);
      response.signature = toBase64url(r.signature);
      if (r.userHandle) response.userHandle = toBase64url(r.userHandle);
    }
    return {
      id: cred.id,
      rawId: toBase64url(cred.rawId),
      type: cred.type,
      response,
      clientExtensionResults: cred.getClientExtensionResults(),
    };
  }

  function requireWebAuthn() {
    if (!window.PublicKeyCredential || !navigator.credentials) {
      throw new Error('This browser cannot use passkeys here (a secure context is required).');
    }
  }

  async function createPasskey(options) {
    requireWebAuthn();
    const cred = await navigator.credentials.create({ publicKey: creationOptions(options.publicKey) });
    return credentialJSON(cred);
  }

  async function getPasskey(options) {
    requireWebAuthn();
    const cred = await navigator.credentials.get({ publicKey: requestOptions(options.publicKey) });
    return credentialJSON(cred);
  }

  // The access token's `amr`, read from its payload (not verified here: it
  // only picks the ceremony; the server decides).
  function signedInWith() {
    try {
      const payload = access.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).amr || [];
    } catch (_) {
      return [];
    }
  }

  async function reauthenticate() {
    if (signedInWith().includes('saml')) {
      // Step-up at the organisation's identity provider (ADR 0220): the
      // browser leaves and comes back here reauthenticated; the action is
      // then done again by the customer.
      const started = await request('POST', API + '/saml/reauth', {
        return_to: window.location.href,
      });
      window.location.assign(started.redirect_url);
      return new Promise(() => {});
    }
    const begin = await request('POST', API + '/webauthn/reauth/begin', {});
    const credential = await getPasskey(begin.options);
    await request('POST', API + '/webauthn/reauth/complete', {
      challenge_id: begin.challenge_id,
      credential,
    });
  }

  // Disables a button while its action runs, so a double click is one action.
  function busy(button, action) {
    return async (event) => {
      if (event) event.preventDefault();
      if (button.disabled) return;
      clearError();
      button.disabled = true;
      button.setAttribute('aria-busy', 'true');
      try {
        await action();
      } catch (err) {
        showError(err);
      } finally {
        button.disabled = false;
        button.removeAttribute('aria-busy');
      }
    };
  }

  // ---- /login ------------------------------------------------------------

  function loginPage() {
    const email = $('#email');
    const name = $('#display-name');
    const loginButton = $('#login');
    const registerButton = $('#register');

    const login = busy(loginButton, async () => {
      const typed = email.value.trim();
      const begin = await request('POST', API + '/webauthn/login/begin', typed ? { email: typed } : {});
      const credential = await getPasskey(begin.options);
      const tokens = await request('POST', API + '/webauthn/login/complete', {
        challenge_id: begin.challenge_id,
        credential,
      });
      access = tokens.access_token;
      window.location.assign('/account');
    });

    const register = busy(registerButton, async () => {
      const typed = email.value.trim();
      if (!typed) {
        email.focus();
        throw new Error('Enter your email to create an account.');
      }
      const begin = await request('POST', API + '/webauthn/register/begin', {
        email: typed,
        display_name: name.value.trim() || typed,
      });
      const credential = await createPasskey(begin.options);
      await request('POST', API + '/webauthn/register/complete', {
        challenge_id: begin.challenge_id,
        credential,
        name: passkeyLabel(),
      });
      window.location.assign('/account');
    });

    $('#login-form').addEventListener('submit', login);
    registerButton.addEventListener('click', register);
  }

  function passkeyLabel() {
    const ua = navigator.userAgent;
    const where = /iPhone|iPad/.test(ua) ? 'iOS' : /Android/.test(ua) ? 'Android'
      : /Mac/.test(ua) ? 'Mac' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'device';
    return 'Passkey on ' + where;
  }

  // ---- /recover ----------------------------------------------------------

  function recoverPage() {
    const button = $('#redeem');
    $('#recover-form').addEventListener('submit', busy(button, async () => {
      const email = $('#email').value.trim();
      const code = $('#code').value.trim();
      if (!email || !code) throw new Error('Enter your email and a backup code.');
      await request('POST', API + '/backup-codes/redeem', { email, code });
      window.location.assign('/account');
    }));
  }

  // ---- /account ----------------------------------------------------------

  function formatTime(iso) {
    if (!iso) return 'never';
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function element(tag, attrs, text) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function actionButton(action, label, accessibleName) {
    const button = element('button', { type: 'button', 'data-action': action, 'aria-label': accessibleName }, label);
    return button;
  }

  // Lists come from read tables. Reads see our own writes unless the
  // projection is over 1 s behind (X-Queue-Consistency: stale); then, after
  // a write whose effect is known, fetch again (bounded) until it shows.
  async function fetchUntil(path, ready) {
    let data = await call('GET', path);
    for (let i = 0; i < 20 && !ready(data); i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      data = await call('GET', path);
    }
    return data;
  }

  function renderPasskeys(list) {
    const ul = $('#passkeys');
    ul.replaceChildren();
    for (const c of list.credentials) {
      const li = element('li', { 'data-credential-id': c.credential_id });
      const text = element('div', { class: 'item-text' });
      text.append(element('span', { class: 'name' }, c.name || 'Passkey'));
      text.append(element('span', { class: 'meta' },
        'Added ' + formatTime(c.created_at) + ' · last used ' + formatTime(c.last_used_at)));
      const buttons = element('div', { class: 'item-actions' });
      const rename = actionButton('rename', 'Rename', 'Rename ' + (c.name || 'passkey'));
      const remove = actionButton('delete', 'Delete', 'Delete ' + (c.name || 'passkey'));
      rename.addEventListener('click', () => startRename(li, c, rename));
      remove.addEventListener('click', busy(remove, async () => {
        await call('DELETE', API + '/credentials/' + encodeURIComponent(c.credential_id));
        li.remove();
        say('Passkey deleted.');
        $('#add-passkey').focus();
      }));
      buttons.append(rename, remove);
      li.append(text, buttons);
      ul.append(li);
    }
  }

  function startRename(li, credential, renameButton) {
    if (li.querySelector('form')) return;
    const form = element('form', { class: 'rename' });
    const id = 'rename-' + credential.credential_id;
    form.append(element('label', { for: id }, 'New name'));
    const input = element('input', { id, type: 'text', maxlength: '64' });
    input.value = credential.name || '';
    const save = element('button', { type: 'submit', class: 'primary' }, 'Save');
    const cancel = element('button', { type: 'button' }, 'Cancel');
    form.append(input, save, cancel);
    li.append(form);
    input.focus();
    cancel.addEventListener('click', () => {
      form.remove();
      renameButton.focus();
    });
    form.addEventListener('submit', busy(save, async () => {
      const name = input.value.trim();
      if (!name) throw new Error('Enter a name for the passkey.');
      await call('PATCH', API + '/credentials/' + encodeURIComponent(credential.credential_id), { name });
      credential.name = name;
      li.querySelector('.name').textContent = name;
      form.remove();
      say('Passkey renamed.');
      renameButton.focus();
    }));
  }

  function renderSessions(list) {
    const ul = $('#sessions');
    ul.replaceChildren();
    for (const s of list.sessions) {
      const attrs = { 'data-session-id': s.session_id };
      if (s.current) attrs['data-current'] = 'true';
      const li = element('li', attrs);
      const text = element('div', { class: 'item-text' });
      const amr = s.amr || [];
      const how = amr.includes('backup_code') ? 'backup code'
        : amr.includes('saml') ? 'single sign-on' : 'passkey';
      text.append(element('span', { class: 'name' }, (s.current ? 'This session' : 'Session') + ' · ' + how));
      text.append(element('span', { class: 'meta' },
        'Started ' + formatTime(s.created_at) + ' · active ' + formatTime(s.last_seen_at)));
      const buttons = element('div', { class: 'item-actions' });
      const revoke = actionButton('revoke', s.current ? 'Sign out' : 'Revoke',
        s.current ? 'Sign out of this session' : 'Revoke session started ' + formatTime(s.created_at));
      revoke.addEventListener('click', busy(revoke, async () => {
        await call('DELETE', API + '/sessions/' + encodeURIComponent(s.session_id));
        if (s.current) {
          access = null;
          window.location.assign('/login');
          return;
        }
        li.remove();
        say('Session revoked.');
      }));
      buttons.append(revoke);
      li.append(text, buttons);
      ul.append(li);
    }
  }

  async function accountPage() {
    if (!(await refresh())) {
      window.location.replace('/login');
      return;
    }
    const me = await call('GET', API + '/me');
    $('#me').textContent = me.email;
    const [passkeys, sessions] = await Promise.all([
      // A signed-in customer nearly always has a passkey (see fetchUntil).
      fetchUntil(API + '/credentials', (d) => d.credentials.length > 0),
      fetchUntil(API + '/sessions', (d) => d.sessions.some((s) => s.current)),
    ]);
    renderPasskeys(passkeys);
    renderSessions(sessions);

    const add = $('#add-passkey');
    add.addEventListener('click', busy(add, async () => {
      const begin = await call('POST', API + '/webauthn/register/begin', {});
      const credential = await createPasskey(begin.options);
      const done = await call('POST', API + '/webauthn/register/complete', {
        challenge_id: begin.challenge_id,
        credential,
        name: passkeyLabel(),
      });
      renderPasskeys(await fetchUntil(API + '/credentials',
        (d) => d.credentials.some((c) => c.credential_id === done.credential_id)));
      say('Passkey added.');
    }));

    const codesButton = $('#backup-codes');
    codesButton.addEventListener('click', busy(codesButton, async () => {
      const result = await call('POST', API + '/backup-codes', {});
      const ul = $('#codes');
      ul.replaceChildren(...result.codes.map((code) => element('li', {}, code)));
      ul.hidden = false;
      say('New backup codes created. Save them now: they are shown once.');
    }));

    const logout = $('#logout');
    logout.addEventListener('click', busy(logout, async () => {
      try {
        await call('POST', API + '/logout');
      } finally {
        access = null;
      }
      window.location.assign('/login');
    }));
  }

  function start() {
    const page = document.body.dataset.page;
    const run = page === 'login' ? loginPage : page === 'recover' ? recoverPage
      : page === 'account' ? accountPage : null;
    if (!run) return;
    Promise.resolve().then(run).catch(showError);
  }

  start();
})();
