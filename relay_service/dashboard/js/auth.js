/**
 * Sign-in. Deployed: the OIDC authorization code flow with PKCE and a nonce against the
 * configured issuer (Cognito's hosted UI by default) — a public client, no secret in the page.
 * Locally: the development issuer's role picker. The ID token lives in sessionStorage
 * (gone when the tab closes) with, deployed, a refresh token that renews it before it
 * expires; the server verifies it on every call, the page reads its claims only to decide
 * what to show.
 */

const TOKEN_KEY = 'cmlfleet.id_token';
const REFRESH_KEY = 'cmlfleet.refresh_token';
const RENEW_BEFORE_MS = 5 * 60_000; // renew an ID token this long before it expires
const PKCE_KEY = 'cmlfleet.pkce';
const ROLE_ORDER = ['admin', 'manager', 'user'];

/** The claims of a JWT, unverified (display only), or null if it is not one. */
export function decodeClaims(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) return null;
  try {
    const json = new TextDecoder().decode(fromBase64Url(parts[1]));
    const claims = JSON.parse(json);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** The strongest role among the claim's groups (`admin` > `manager` > `user`), or null. */
export function roleOf(claims, rolesClaim = 'cognito:groups') {
  let groups = claims?.[rolesClaim] ?? [];
  if (typeof groups === 'string') groups = groups.split(/[\s,]+/);
  if (!Array.isArray(groups)) return null;
  return ROLE_ORDER.find((role) => groups.includes(role)) ?? null;
}

/** The username the API uses for ownership (same claim order as the server). */
export function usernameOf(claims) {
  return claims?.['cognito:username'] ?? claims?.username ?? claims?.sub ?? '';
}

export function base64Url(bytes) {
  let binary = '';
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromBase64Url(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

/** RFC 7636 S256: base64url(SHA-256(verifier)). */
export async function pkceChallenge(verifier) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
  return base64Url(digest);
}

function randomString(bytes = 32) {
  return base64Url(crypto.getRandomValues(new Uint8Array(bytes)));
}

export class Session {
  /**
   * @param {object} config `/config.json`: `{roles_claim, sign_in: {mode, …}}`
   * @param {{storage?: Storage, location?: Location, history?: History, fetch?: typeof fetch, now?: () => number}} [env]
   */
  constructor(config, env = {}) {
    this.config = config;
    this.signIn = config.sign_in ?? { mode: 'none' };
    this._storage = env.storage ?? globalThis.sessionStorage;
    this._location = env.location ?? globalThis.location;
    this._history = env.history ?? globalThis.history;
    this._fetch = env.fetch ?? globalThis.fetch.bind(globalThis);
    this._now = env.now ?? Date.now;
    this._token = null;
  }

  get token() {
    return this._token;
  }

  get claims() {
    return decodeClaims(this._token);
  }

  get role() {
    return roleOf(this.claims, this.config.roles_claim);
  }

  get username() {
    return usernameOf(this.claims);
  }

  /** Whether a token is held and not expired (with a minute to spare). */
  get valid() {
    const exp = this.claims?.exp;
    return typeof exp === 'number' && exp * 1000 > this._now() + 60_000;
  }

  /** The stored token, or one from an OIDC redirect that just came back. */
  async restore() {
    const params = new URLSearchParams(this._location.search);
    if (this.signIn.mode === 'oidc' && params.has('code')) {
      await this._finishOidc(params);
    } else {
      this._token = this._storage.getItem(TOKEN_KEY);
    }
    await this.freshToken();
    if (!this.valid) this._forget();
    return this.valid;
  }

  /**
   * The ID token, renewed with the refresh token (OIDC) when it is about to expire, so an
   * open dashboard outlives Cognito's one-hour ID tokens. Without a refresh token an
   * expired token is returned as it is: the server answers 401 and the page signs out.
   */
  async freshToken() {
    const exp = this.claims?.exp;
    const refreshToken = this._storage.getItem(REFRESH_KEY);
    const expiring = typeof exp !== 'number' || exp * 1000 < this._now() + RENEW_BEFORE_MS;
    if (expiring && refreshToken && this.signIn.mode === 'oidc') {
      this._renewing ??= this._renew(refreshToken).finally(() => { this._renewing = null; });
      await this._renewing;
    }
    return this._token;
  }

  async _renew(refreshToken) {
    // No nonce check here: a renewed ID token need not carry one (OIDC Core 12.2).
    try {
      const body = await this._tokenRequest({
        grant_type: 'refresh_token',
        client_id: this.signIn.client_id,
        refresh_token: refreshToken,
      });
      this._keep(body.id_token, body.refresh_token);
    } catch {
      this._storage.removeItem(REFRESH_KEY); // refused or revoked: sign in again
    }
  }

  /** Local stack only: a token for any user and role from the development issuer. */
  async signInDevelopment(username, role) {
    const response = await this._fetch(this.signIn.token_url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, role }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.id_token !== 'string') {
      throw new Error(body.error ?? `sign-in failed (${response.status})`);
    }
    this._keep(body.id_token);
  }

  /**
   * Deployed: go to the issuer's sign-in page; it comes back with `?code=`. The nonce ties
   * the ID token to this request: the issuer copies it into the token, and an ID token
   * minted for another request (replayed or injected) is refused on the way back.
   */
  async beginOidc() {
    const verifier = randomString(48);
    const state = randomString(16);
    const nonce = randomString(16);
    this._storage.setItem(PKCE_KEY, JSON.stringify({ verifier, state, nonce }));
    const url = new URL(this.signIn.authorize_url);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: this.signIn.client_id,
      redirect_uri: this._redirectUri(),
      scope: this.signIn.scopes ?? 'openid',
      state,
      nonce,
      code_challenge: await pkceChallenge(verifier),
      code_challenge_method: 'S256',
    }).toString();
    this._location.assign(url.toString());
  }

  /**
   * Forget the tokens; with OIDC also end the issuer's session (its logout page comes
   * back to the dashboard). Returns true when the page is navigating away: the caller
   * must not reload then, or the logout request is cancelled.
   */
  signOut() {
    this._forget();
    if (this.signIn.mode === 'oidc' && this.signIn.logout_url) {
      const url = new URL(this.signIn.logout_url);
      url.search = new URLSearchParams({
        client_id: this.signIn.client_id,
        logout_uri: this._redirectUri(),
      }).toString();
      this._location.assign(url.toString());
      return true;
    }
    return false;
  }

  async _finishOidc(params) {
    const saved = JSON.parse(this._storage.getItem(PKCE_KEY) ?? 'null');
    this._storage.removeItem(PKCE_KEY);
    this._history?.replaceState(null, '', this._location.pathname); // drop ?code= from the URL
    if (!saved || saved.state !== params.get('state')) {
      throw new Error('the sign-in answer does not match the request; sign in again');
    }
    const body = await this._tokenRequest({
      grant_type: 'authorization_code',
      client_id: this.signIn.client_id,
      code: params.get('code'),
      redirect_uri: this._redirectUri(),
      code_verifier: saved.verifier,
    });
    // Both missing is no match: a request stored without a nonce proves nothing.
    if (!saved.nonce || decodeClaims(body.id_token)?.nonce !== saved.nonce) {
      this._forget();
      throw new Error(
        'the sign-in answer does not belong to this sign-in (nonce mismatch); sign in again',
      );
    }
    this._keep(body.id_token, body.refresh_token);
  }

  async _tokenRequest(form) {
    const response = await this._fetch(this.signIn.token_url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(form).toString(),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.id_token !== 'string') {
      throw new Error(`the issuer refused the sign-in (${body.error ?? response.status})`);
    }
    return body;
  }

  _redirectUri() {
    return `${this._location.origin}/`;
  }

  _keep(token, refreshToken) {
    this._token = token;
    this._storage.setItem(TOKEN_KEY, token);
    if (typeof refreshToken === 'string') this._storage.setItem(REFRESH_KEY, refreshToken);
  }

  _forget() {
    this._token = null;
    this._storage.removeItem(TOKEN_KEY);
    this._storage.removeItem(REFRESH_KEY);
  }
}
