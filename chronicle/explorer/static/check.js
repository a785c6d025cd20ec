// Chronicle explorer: the in-browser check (docs/explorer.md).
//
// The reader pins the ledger's server key once (kept in localStorage, a warning shown when
// the server presents another). Then each page checks, here and not on the server's word:
//  - the page's own answer and the signed JSON answer it relies on (/chronicle/lookup/…
//    for an entry, /chronicle/lasthash for the overview) carry a Body-Signature-Ed25519
//    that verifies with the pinned key over the exact bytes received;
//  - the entry's Ed25519 signature verifies with its publisher's key;
//  - the entry's currhash is BLAKE2b-256(created | publickey | signature | contents),
//    keyed with the previous entry's currhash, as the JSON states it;
//  - that currhash is the one this page shows.
// Ed25519: WebCrypto where the browser has it, else TweetNaCl (vendor/nacl-fast.js);
// BLAKE2b: blakejs (vendor/blake2b.js). No request leaves this origin.
'use strict';

(function () {
  const STORE = 'chronicle.pinned-server-key';
  const SIGNATURE = 'Body-Signature-Ed25519';
  const encoder = new TextEncoder();

  function b64uDecode (text, length) {
    if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*={0,2}$/.test(text)) {
      throw new Error('not base64url: ' + String(text).slice(0, 60));
    }
    let b64 = text.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    if (length !== undefined && out.length !== length) {
      throw new Error('expected ' + length + ' bytes, got ' + out.length);
    }
    return out;
  }

  function b64uEncode (bytes) {
    let bin = '';
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_');
  }

  function joinBytes (parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  let how = null;

  async function ed25519Verify (publicKey, message, signature) {
    if (window.crypto && crypto.subtle) {
      try {
        const key = await crypto.subtle.importKey('raw', publicKey, { name: 'Ed25519' },
          false, ['verify']);
        const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, signature, message);
        how = 'WebCrypto';
        return ok;
      } catch (e) {
        // This browser's WebCrypto has no Ed25519 (or refused the key): TweetNaCl decides.
      }
    }
    how = 'TweetNaCl';
    return window.nacl.sign.detached.verify(message, signature, publicKey);
  }

  function pinnedKey () {
    try { return localStorage.getItem(STORE); } catch (e) { return null; }
  }

  async function signedFetch (url, key) {
    const resp = await fetch(url, { cache: 'no-store', credentials: 'omit' });
    const body = new Uint8Array(await resp.arrayBuffer());
    const header = resp.headers.get(SIGNATURE);
    if (!header) throw new Error(url + ': the answer is not signed');
    const ok = await ed25519Verify(key, body, b64uDecode(header, 64));
    if (!ok) throw new Error(url + ': the answer\'s signature does not verify with the pinned key');
    if (resp.status !== 200) throw new Error(url + ': HTTP ' + resp.status);
    return body;
  }

  async function checkRow (row) {
    const pk = b64uDecode(row.publickey, 32);
    const sig = b64uDecode(row.signature, 64);
    const contents = encoder.encode(row.contents);
    if (!(await ed25519Verify(pk, contents, sig))) {
      throw new Error('the entry\'s signature does not verify with its publisher\'s key');
    }
    const prev = row.prevhash ? b64uDecode(row.prevhash, 32) : undefined;
    const preimage = joinBytes([encoder.encode(row.created), pk, sig, contents]);
    const computed = b64uEncode(window.blakejs.blake2b(preimage, prev, 32));
    if (computed !== row.currhash) {
      throw new Error('currhash recomputed as ' + computed + ', the answer says ' + row.currhash);
    }
  }

  function showResult (el, status, detail) {
    el.querySelector('.status').textContent = status;
    el.querySelector('.detail').textContent = detail;
    el.className = 'check ' + status.replace(/\s+/g, '-');
  }

  async function runCheck () {
    const el = document.getElementById('check');
    if (!el) return;
    const keyText = pinnedKey();
    if (!keyText) {
      showResult(el, 'not checked', 'Pin the server key (above) to check this page in your browser.');
      return;
    }
    showResult(el, 'checking', '');
    try {
      const key = b64uDecode(keyText, 32);
      await signedFetch(location.href, key);
      const body = await signedFetch(el.dataset.url, key);
      const doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body));
      const rows = Array.isArray(doc.results) ? doc.results : [];
      const wanted = el.dataset.currhash;
      if (el.dataset.check === 'lasthash') {
        if (!wanted && rows.length === 0) {
          showResult(el, 'verified', 'Empty chain; lasthash answer signed by the pinned key (' + how + ').');
          return;
        }
        if (rows.length !== 1) throw new Error('the signed answer should hold exactly one row (the head)');
        await checkRow(rows[0]);
        if (rows[0].currhash !== wanted) {
          showResult(el, 'stale', 'The chain has grown since this page was made (head now ' +
            rows[0].currhash + '): reload.');
          return;
        }
      } else {
        const row = rows.find((r) => r.currhash === wanted);
        if (!row) throw new Error('the signed answer has no entry with this page\'s currhash');
        await checkRow(row);
      }
      showResult(el, 'verified', 'Page and API answer signed by the pinned key; entry signature ' +
        'valid; currhash recomputed (BLAKE2b) and equal to the one shown (Ed25519 by ' + how + ').');
    } catch (e) {
      showResult(el, 'failed', e.message);
    }
  }

  function pinPanel () {
    const panel = document.getElementById('pin');
    const status = document.getElementById('pin-status');
    const input = document.getElementById('pin-key');
    const form = document.getElementById('pin-form');
    if (!panel) return;
    panel.hidden = false;
    const served = document.body.dataset.serverKey;
    const renderPin = (notice) => {
      const current = pinnedKey();
      status.textContent = '';
      panel.className = 'pin';
      if (!current) {
        status.textContent = 'No server key pinned: paste the ledger\'s public key (from its ' +
          'operator, not from this page) to check pages in your browser.';
      } else if (current !== served) {
        panel.className = 'pin warn';
        status.textContent = 'Warning: the server now presents the key ' + served +
          ', not the key you pinned (' + current + '). Checks fail until you pin another key; ' +
          'do so only if the operator announced a key change.';
      } else {
        status.textContent = 'Pinned server key: ' + current + '.';
      }
      if (notice) status.textContent += ' ' + notice;
    };
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      try {
        b64uDecode(text, 32);
      } catch (e) {
        renderPin('Not a key: ' + e.message);
        return;
      }
      const before = pinnedKey();
      localStorage.setItem(STORE, text);
      input.value = '';
      renderPin(before && before !== text ? 'Pinned key replaced (was ' + before + ').' : '');
      runCheck();
    });
    renderPin('');
  }

  document.addEventListener('DOMContentLoaded', () => {
    pinPanel();
    runCheck();
  });
})();
