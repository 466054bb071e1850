// Unit tests for the dashboard's sign-in helpers and Session, driven by injected fakes.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';

import {
  Session, base64Url, decodeClaims, pkceChallenge, roleOf, usernameOf,
} from '../../relay_service/dashboard/js/auth.js';

const TOKEN_KEY = 'cmlfleet.id_token';
const PKCE_KEY = 'cmlfleet.pkce';
const REFRESH_KEY = 'cmlfleet.refresh_token';
const NOW = Date.parse('2026-11-30T12:00:00Z');
const nowSeconds = NOW / 1000;

// ---------------------------------------------------------------- builders and fakes

const segment = (object) => Buffer.from(JSON.stringify(object), 'utf8').toString('base64url');

/** A JWT-shaped string (header.payload.signature); the signature is not checked here. */
function jwt(claims) {
  return `${segment({ alg: 'RS256', typ: 'JWT', kid: 'dev-1' })}.${segment(claims)}.c2lnbmF0dXJl`;
}

/** sessionStorage semantics: getItem answers null for a missing key. */
class FakeStorage {
  constructor(entries = {}) {
    this.map = new Map(Object.entries(entries));
  }

  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  setItem(key, value) {
    this.map.set(key, String(value));
  }

  removeItem(key) {
    this.map.delete(key);
  }
}

function fakeLocation(search = '') {
  return {
    origin: 'https://fleet.example.com',
    pathname: '/',
    search,
    assigned: [],
    assign(url) {
      this.assigned.push(url);
    },
  };
}

function fakeHistory() {
  return {
    calls: [],
    replaceState(...args) {
      this.calls.push(args);
    },
  };
}

/** A fetch that answers with `status` and `body` (an object, or a function throwing on json()). */
function fakeFetch(status, body) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    return {
      ok: status >= 200 && status < 300,
      status,
      json: async () => {
        if (body instanceof Error) throw body;
        return body;
      },
    };
  };
  fetch.calls = calls;
  return fetch;
}

const DEV_CONFIG = {
  roles_claim: 'cognito:groups',
  sign_in: { mode: 'development', token_url: 'http://localhost:9000/dev/token' },
};

const OIDC_CONFIG = {
  roles_claim: 'cognito:groups',
  sign_in: {
    mode: 'oidc',
    authorize_url: 'https://auth.example.com/oauth2/authorize',
    token_url: 'https://auth.example.com/oauth2/token',
    logout_url: 'https://auth.example.com/logout',
    client_id: 'client-123',
  },
};

function session(config, { storage = new FakeStorage(), search = '', fetch = fakeFetch(500, {}) } = {}) {
  const env = {
    storage, location: fakeLocation(search), history: fakeHistory(), fetch, now: () => NOW,
  };
  return { session: new Session(config, env), ...env };
}

const sha256Url = (text) => createHash('sha256').update(text).digest('base64url');

// ---------------------------------------------------------------- pure helpers

describe('decodeClaims', () => {
  it('decodes the payload of a real-shaped JWT, including non-ASCII UTF-8', () => {
    const claims = { 'cognito:username': 'zoë', sub: 's-1', exp: 1796040000, 'cognito:groups': ['user'] };
    const token = jwt(claims);
    const payload = token.split('.')[1];
    // The fixture exercises the base64url alphabet and missing padding.
    assert.match(payload, /[-_]/);
    assert.notEqual(payload.length % 4, 0);
    assert.deepEqual(decodeClaims(token), claims);
    assert.equal(decodeClaims(token)['cognito:username'], 'zoë');
  });

  it('returns null for anything that is not a JWT with a JSON object payload', () => {
    assert.equal(decodeClaims(null), null);
    assert.equal(decodeClaims(42), null);
    assert.equal(decodeClaims(''), null);
    assert.equal(decodeClaims('garbage'), null);
    assert.equal(decodeClaims('a.b'), null);
    assert.equal(decodeClaims('a.b.c.d'), null);
    assert.equal(decodeClaims('a.!!!!.c'), null);
    assert.equal(decodeClaims(`a.${Buffer.from('{not json').toString('base64url')}.c`), null);
    assert.equal(decodeClaims(`a.${segment(42)}.c`), null);
    assert.equal(decodeClaims(`a.${segment(null)}.c`), null);
  });
});

describe('roleOf', () => {
  it('picks the strongest of several groups', () => {
    assert.equal(roleOf({ 'cognito:groups': ['user', 'admin', 'manager'] }), 'admin');
    assert.equal(roleOf({ 'cognito:groups': ['user', 'manager'] }), 'manager');
    assert.equal(roleOf({ 'cognito:groups': ['other', 'user'] }), 'user');
  });

  it('accepts a space- or comma-separated string claim', () => {
    assert.equal(roleOf({ 'cognito:groups': 'user manager' }), 'manager');
    assert.equal(roleOf({ 'cognito:groups': 'user,admin' }), 'admin');
    assert.equal(roleOf({ 'cognito:groups': 'user' }), 'user');
  });

  it('reads a custom claim name', () => {
    const claims = { roles: ['manager'], 'cognito:groups': ['admin'] };
    assert.equal(roleOf(claims, 'roles'), 'manager');
    assert.equal(roleOf(claims), 'admin');
  });

  it('returns null when no known role is present', () => {
    assert.equal(roleOf({}), null);
    assert.equal(roleOf(null), null);
    assert.equal(roleOf({ 'cognito:groups': [] }), null);
    assert.equal(roleOf({ 'cognito:groups': ['superadmin', 'guest'] }), null);
    assert.equal(roleOf({ 'cognito:groups': { admin: true } }), null);
  });
});

describe('usernameOf', () => {
  it('prefers cognito:username, then username, then sub', () => {
    assert.equal(usernameOf({ 'cognito:username': 'cu', username: 'u', sub: 's' }), 'cu');
    assert.equal(usernameOf({ username: 'u', sub: 's' }), 'u');
    assert.equal(usernameOf({ sub: 's' }), 's');
    assert.equal(usernameOf({}), '');
    assert.equal(usernameOf(null), '');
  });
});

describe('base64Url and pkceChallenge', () => {
  it('uses the URL-safe alphabet without padding', () => {
    assert.equal(base64Url(new Uint8Array([0xfb, 0xff])), '-_8');
    assert.equal(base64Url(new Uint8Array([0xfb, 0xff, 0xbf]).buffer), '-_-_');
    assert.equal(base64Url(new Uint8Array([])), '');
  });

  it('computes the RFC 7636 Appendix B S256 challenge', async () => {
    // Checked against Python: base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).
    const verifier = 'dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk';
    assert.equal(await pkceChallenge(verifier), 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM');
  });
});

// ---------------------------------------------------------------- Session

describe('Session.valid', () => {
  const withExp = (exp) => {
    const { session: s } = session(DEV_CONFIG, {
      storage: new FakeStorage({ [TOKEN_KEY]: jwt({ sub: 'u', exp }) }),
    });
    return s;
  };

  it('is false without a token', () => {
    const { session: s } = session(DEV_CONFIG);
    assert.equal(s.valid, false);
  });

  it('is false for a token that expired', async () => {
    const s = withExp(nowSeconds - 10);
    await s.restore();
    assert.equal(s.valid, false);
  });

  it('is false for a token expiring within a minute', async () => {
    const s = withExp(nowSeconds + 30);
    await s.restore();
    assert.equal(s.valid, false);
    const edge = withExp(nowSeconds + 60);
    await edge.restore();
    assert.equal(edge.valid, false);
  });

  it('is true for a token expiring later', async () => {
    const s = withExp(nowSeconds + 61);
    assert.equal(await s.restore(), true);
    assert.equal(s.valid, true);
    const far = withExp(nowSeconds + 365 * 24 * 3600);
    assert.equal(await far.restore(), true);
  });
});

describe('Session.restore', () => {
  it('reads the stored token and exposes its claims', async () => {
    const token = jwt({ 'cognito:username': 'zoë', 'cognito:groups': ['user', 'manager'], exp: nowSeconds + 3600 });
    const { session: s, storage } = session(DEV_CONFIG, { storage: new FakeStorage({ [TOKEN_KEY]: token }) });
    assert.equal(await s.restore(), true);
    assert.equal(s.token, token);
    assert.equal(s.username, 'zoë');
    assert.equal(s.role, 'manager');
    assert.equal(storage.getItem(TOKEN_KEY), token);
  });

  it('forgets an expired stored token', async () => {
    const token = jwt({ sub: 'u', exp: nowSeconds - 1 });
    const { session: s, storage } = session(DEV_CONFIG, { storage: new FakeStorage({ [TOKEN_KEY]: token }) });
    assert.equal(await s.restore(), false);
    assert.equal(s.token, null);
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('uses the configured roles claim', async () => {
    const token = jwt({ sub: 'u', groups: 'admin', exp: nowSeconds + 3600 });
    const config = { ...DEV_CONFIG, roles_claim: 'groups' };
    const { session: s } = session(config, { storage: new FakeStorage({ [TOKEN_KEY]: token }) });
    await s.restore();
    assert.equal(s.role, 'admin');
  });
});

describe('Session.signInDevelopment', () => {
  it('posts {username, role} to token_url and stores the id_token', async () => {
    const token = jwt({ sub: 'dev', exp: nowSeconds + 3600 });
    const fetch = fakeFetch(200, { id_token: token });
    const { session: s, storage } = session(DEV_CONFIG, { fetch });
    await s.signInDevelopment('zoë', 'manager');

    assert.equal(fetch.calls.length, 1);
    const [{ url, init }] = fetch.calls;
    assert.equal(url, DEV_CONFIG.sign_in.token_url);
    assert.equal(init.method, 'POST');
    assert.equal(init.headers['Content-Type'], 'application/json');
    assert.deepEqual(JSON.parse(init.body), { username: 'zoë', role: 'manager' });
    assert.equal(s.token, token);
    assert.equal(storage.getItem(TOKEN_KEY), token);
    assert.equal(s.valid, true);
  });

  it("throws with the server's error text on 400 and stores nothing", async () => {
    const fetch = fakeFetch(400, { error: 'unknown role: wizard' });
    const { session: s, storage } = session(DEV_CONFIG, { fetch });
    await assert.rejects(s.signInDevelopment('zoë', 'wizard'), { message: 'unknown role: wizard' });
    assert.equal(s.token, null);
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('throws with the status when the answer is not JSON', async () => {
    const fetch = fakeFetch(502, new SyntaxError('Unexpected token <'));
    const { session: s } = session(DEV_CONFIG, { fetch });
    await assert.rejects(s.signInDevelopment('a', 'user'), { message: 'sign-in failed (502)' });
  });
});

describe('Session OIDC flow', () => {
  it('beginOidc stores verifier and state and goes to the authorize URL with an S256 challenge', async () => {
    const { session: s, storage, location } = session(OIDC_CONFIG);
    await s.beginOidc();

    const saved = JSON.parse(storage.getItem(PKCE_KEY));
    assert.match(saved.verifier, /^[A-Za-z0-9_-]{43,128}$/, 'RFC 7636 verifier alphabet and length');
    assert.match(saved.state, /^[A-Za-z0-9_-]{16,}$/);

    assert.equal(location.assigned.length, 1);
    const url = new URL(location.assigned[0]);
    assert.equal(`${url.origin}${url.pathname}`, OIDC_CONFIG.sign_in.authorize_url);
    const params = url.searchParams;
    assert.equal(params.get('response_type'), 'code');
    assert.equal(params.get('client_id'), 'client-123');
    assert.equal(params.get('redirect_uri'), 'https://fleet.example.com/');
    assert.equal(params.get('scope'), 'openid');
    assert.equal(params.get('state'), saved.state);
    assert.equal(params.get('code_challenge_method'), 'S256');
    assert.equal(params.get('code_challenge'), sha256Url(saved.verifier));
  });

  it('beginOidc uses fresh random values each time', async () => {
    const a = session(OIDC_CONFIG);
    const b = session(OIDC_CONFIG);
    await a.session.beginOidc();
    await b.session.beginOidc();
    const savedA = JSON.parse(a.storage.getItem(PKCE_KEY));
    const savedB = JSON.parse(b.storage.getItem(PKCE_KEY));
    assert.notEqual(savedA.verifier, savedB.verifier);
    assert.notEqual(savedA.state, savedB.state);
  });

  it('restore() with ?code&state exchanges the code, stores the id_token and drops the query', async () => {
    const token = jwt({
      'cognito:username': 'zoë', 'cognito:groups': ['admin'], exp: nowSeconds + 3600, nonce: 'n-1',
    });
    const fetch = fakeFetch(200, { id_token: token, access_token: 'ignored' });
    const storage = new FakeStorage({
      [PKCE_KEY]: JSON.stringify({ verifier: 'the-verifier', state: 'st-1', nonce: 'n-1' }),
    });
    const { session: s, history } = session(OIDC_CONFIG, { storage, fetch, search: '?code=abc%2B1&state=st-1' });

    assert.equal(await s.restore(), true);

    assert.equal(fetch.calls.length, 1);
    const [{ url, init }] = fetch.calls;
    assert.equal(url, OIDC_CONFIG.sign_in.token_url);
    assert.equal(init.method, 'POST');
    assert.equal(init.headers['Content-Type'], 'application/x-www-form-urlencoded');
    const form = Object.fromEntries(new URLSearchParams(init.body));
    assert.deepEqual(form, {
      grant_type: 'authorization_code',
      client_id: 'client-123',
      code: 'abc+1',
      redirect_uri: 'https://fleet.example.com/',
      code_verifier: 'the-verifier',
    });

    assert.equal(s.token, token);
    assert.equal(storage.getItem(TOKEN_KEY), token);
    assert.equal(storage.getItem(PKCE_KEY), null, 'the PKCE pair is single-use');
    assert.equal(s.role, 'admin');
    assert.deepEqual(history.calls, [[null, '', '/']]);
  });

  it('the whole round trip: the verifier sent to the token endpoint matches the challenge sent to authorize', async () => {
    const storage = new FakeStorage();
    const first = session(OIDC_CONFIG, { storage });
    await first.session.beginOidc();
    const authorize = new URL(first.location.assigned[0]).searchParams;
    // The issuer echoes the nonce of the authorize request into the ID token (L9).
    const token = jwt({ sub: 'u', exp: nowSeconds + 3600, nonce: authorize.get('nonce') });

    const fetch = fakeFetch(200, { id_token: token });
    const second = session(OIDC_CONFIG, {
      storage, fetch, search: `?code=xyz&state=${encodeURIComponent(authorize.get('state'))}`,
    });
    assert.equal(await second.session.restore(), true);
    const form = new URLSearchParams(fetch.calls[0].init.body);
    assert.equal(sha256Url(form.get('code_verifier')), authorize.get('code_challenge'));
  });

  it('a mismatched state throws and stores no token', async () => {
    const fetch = fakeFetch(200, { id_token: jwt({ sub: 'u', exp: nowSeconds + 3600 }) });
    const storage = new FakeStorage({ [PKCE_KEY]: JSON.stringify({ verifier: 'v', state: 'expected' }) });
    const { session: s, history } = session(OIDC_CONFIG, { storage, fetch, search: '?code=abc&state=forged' });

    await assert.rejects(s.restore(), /does not match/);
    assert.equal(fetch.calls.length, 0, 'no code exchange');
    assert.equal(s.token, null);
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.equal(storage.getItem(PKCE_KEY), null);
    assert.equal(history.calls.length, 1, 'the query is dropped anyway');
  });

  it('a code without a stored PKCE pair throws', async () => {
    const fetch = fakeFetch(200, { id_token: 'x.y.z' });
    const { session: s } = session(OIDC_CONFIG, { fetch, search: '?code=abc&state=s' });
    await assert.rejects(s.restore(), /does not match/);
    assert.equal(fetch.calls.length, 0);
  });

  it('an issuer refusal throws with its error and stores no token', async () => {
    const fetch = fakeFetch(400, { error: 'invalid_grant' });
    const storage = new FakeStorage({ [PKCE_KEY]: JSON.stringify({ verifier: 'v', state: 's' }) });
    const { session: s } = session(OIDC_CONFIG, { storage, fetch, search: '?code=abc&state=s' });
    await assert.rejects(s.restore(), { message: 'the issuer refused the sign-in (invalid_grant)' });
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('L9: beginOidc sends a fresh nonce in the authorize request and keeps it with state and verifier', async () => {
    const a = session(OIDC_CONFIG);
    const b = session(OIDC_CONFIG);
    await a.session.beginOidc();
    await b.session.beginOidc();
    const saved = JSON.parse(a.storage.getItem(PKCE_KEY));
    assert.match(saved.nonce, /^[A-Za-z0-9_-]{22,}$/, 'at least 128 random bits, base64url');
    assert.notEqual(saved.nonce, saved.state);
    assert.equal(new URL(a.location.assigned[0]).searchParams.get('nonce'), saved.nonce);
    assert.notEqual(JSON.parse(b.storage.getItem(PKCE_KEY)).nonce, saved.nonce);
  });

  /** A redirect back with ?code&state=s after a request that stored `nonce`; `claims` is the ID token's. */
  function codeReturn(claims, { nonce = 'n-expected', refresh = 'r-1' } = {}) {
    const fetch = fakeFetch(200, { id_token: jwt(claims), refresh_token: refresh });
    const storage = new FakeStorage({
      [TOKEN_KEY]: jwt({ sub: 'earlier', exp: nowSeconds + 3600 }), // an earlier session's
      [REFRESH_KEY]: 'r-earlier',
      [PKCE_KEY]: JSON.stringify({ verifier: 'v', state: 's', nonce }),
    });
    return { ...session(OIDC_CONFIG, { storage, fetch, search: '?code=abc&state=s' }), fetch };
  }

  it('L9: an ID token whose nonce differs from the request\'s is refused and every token forgotten', async () => {
    const { session: s, storage, fetch } = codeReturn({ sub: 'u', exp: nowSeconds + 3600, nonce: 'n-replayed' });
    await assert.rejects(s.restore(), {
      message: 'the sign-in answer does not belong to this sign-in (nonce mismatch); sign in again',
    });
    assert.equal(fetch.calls.length, 1, 'the code was exchanged, then the ID token checked');
    assert.equal(s.token, null);
    assert.equal(s.valid, false);
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.equal(storage.getItem(REFRESH_KEY), null, 'the refresh token that came with it is not kept');
    assert.equal(storage.getItem(PKCE_KEY), null);
  });

  it('L9: an ID token without a nonce is refused', async () => {
    const { session: s, storage } = codeReturn({ sub: 'u', exp: nowSeconds + 3600 });
    await assert.rejects(s.restore(), /nonce mismatch/);
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.equal(storage.getItem(REFRESH_KEY), null);
  });

  it('L9: a stored request without a nonce (from before the upgrade) refuses an ID token without one', async () => {
    // Both missing must not count as equal.
    const { session: s, storage } = codeReturn({ sub: 'u', exp: nowSeconds + 3600 }, { nonce: undefined });
    await assert.rejects(s.restore(), /nonce mismatch/);
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('L9: an ID token that is not a JWT is refused', async () => {
    const fetch = fakeFetch(200, { id_token: 'not-a-jwt' });
    const storage = new FakeStorage({ [PKCE_KEY]: JSON.stringify({ verifier: 'v', state: 's', nonce: 'n' }) });
    const { session: s } = session(OIDC_CONFIG, { storage, fetch, search: '?code=abc&state=s' });
    await assert.rejects(s.restore(), /nonce mismatch/);
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('L9: a matching nonce signs in and keeps the refresh token', async () => {
    const { session: s, storage } = codeReturn({ sub: 'u', exp: nowSeconds + 3600, nonce: 'n-expected' });
    assert.equal(await s.restore(), true);
    assert.equal(s.claims.sub, 'u');
    assert.equal(storage.getItem(REFRESH_KEY), 'r-1');
  });

  it('signOut forgets the token and goes to the logout URL with client_id and logout_uri', async () => {
    const token = jwt({ sub: 'u', exp: nowSeconds + 3600 });
    const { session: s, storage, location } = session(OIDC_CONFIG, {
      storage: new FakeStorage({ [TOKEN_KEY]: token }),
    });
    await s.restore();
    assert.equal(s.valid, true);

    assert.equal(s.signOut(), true, 'the page navigates away: the caller must not reload');
    assert.equal(s.token, null);
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.equal(location.assigned.length, 1);
    const url = new URL(location.assigned[0]);
    assert.equal(`${url.origin}${url.pathname}`, OIDC_CONFIG.sign_in.logout_url);
    assert.equal(url.searchParams.get('client_id'), 'client-123');
    assert.equal(url.searchParams.get('logout_uri'), 'https://fleet.example.com/');
  });

  it('signOut in development mode only forgets the token', async () => {
    const token = jwt({ sub: 'u', exp: nowSeconds + 3600 });
    const { session: s, storage, location } = session(DEV_CONFIG, {
      storage: new FakeStorage({ [TOKEN_KEY]: token }),
    });
    await s.restore();
    assert.equal(s.signOut(), false);
    assert.equal(storage.getItem(TOKEN_KEY), null);
    assert.equal(location.assigned.length, 0);
  });
});

describe('Session renewal (OIDC refresh token)', () => {
  it('renews an ID token about to expire with the stored refresh token', async () => {
    const first = jwt({ sub: 'u', exp: nowSeconds + 120 }); // expires in 2 min: renew
    const renewed = jwt({ sub: 'u', exp: nowSeconds + 3600 });
    const fetch = fakeFetch(200, { id_token: renewed });
    const storage = new FakeStorage({ [TOKEN_KEY]: first, [REFRESH_KEY]: 'r-1' });
    const { session: s } = session(OIDC_CONFIG, { storage, fetch });
    assert.equal(await s.restore(), true);
    assert.equal(s.token, renewed);
    assert.equal(storage.getItem(TOKEN_KEY), renewed);
    assert.equal(fetch.calls.length, 1);
    const form = new URLSearchParams(fetch.calls[0].init.body);
    assert.equal(form.get('grant_type'), 'refresh_token');
    assert.equal(form.get('refresh_token'), 'r-1');
    assert.equal(form.get('client_id'), 'client-123');
    assert.equal(await s.freshToken(), renewed);
    assert.equal(fetch.calls.length, 1, 'a fresh token is not renewed again');
  });

  it('concurrent callers share one renewal', async () => {
    const renewed = jwt({ sub: 'u', exp: nowSeconds + 3600 });
    const fetch = fakeFetch(200, { id_token: renewed });
    const storage = new FakeStorage({
      [TOKEN_KEY]: jwt({ sub: 'u', exp: nowSeconds - 10 }), [REFRESH_KEY]: 'r-1',
    });
    const { session: s } = session(OIDC_CONFIG, { storage, fetch });
    const tokens = await Promise.all([s.freshToken(), s.freshToken(), s.freshToken()]);
    assert.deepEqual(tokens, [renewed, renewed, renewed]);
    assert.equal(fetch.calls.length, 1);
  });

  it('a refused renewal forgets the refresh token and leaves the session to expire', async () => {
    const expired = jwt({ sub: 'u', exp: nowSeconds - 10 });
    const fetch = fakeFetch(400, { error: 'invalid_grant' });
    const storage = new FakeStorage({ [TOKEN_KEY]: expired, [REFRESH_KEY]: 'r-1' });
    const { session: s } = session(OIDC_CONFIG, { storage, fetch });
    assert.equal(await s.restore(), false);
    assert.equal(storage.getItem(REFRESH_KEY), null);
    assert.equal(storage.getItem(TOKEN_KEY), null);
  });

  it('development tokens are never renewed', async () => {
    const fetch = fakeFetch(200, { id_token: jwt({ sub: 'u', exp: nowSeconds + 3600 }) });
    const expiring = jwt({ sub: 'u', exp: nowSeconds + 120 });
    const storage = new FakeStorage({ [TOKEN_KEY]: expiring, [REFRESH_KEY]: 'r-1' });
    const { session: s } = session(DEV_CONFIG, { storage, fetch });
    assert.equal(await s.freshToken(), null, 'not restored yet');
    await s.restore();
    assert.equal(s.token, expiring);
    assert.equal(fetch.calls.length, 0);
  });
});
