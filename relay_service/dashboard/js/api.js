/** The REST API of CML Fleet, as the dashboard uses it. Errors become `ApiError`s. */

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0 when the request did not get an answer)
   * @param {string} code the API's error code (`unauthorized`, `forbidden`, …)
   * @param {string} message the API's message, for people
   */
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export class Api {
  /**
   * @param {() => Promise<string|null>|string|null} getToken the bearer token, if signed in
   * @param {{fetch?: typeof fetch, base?: string, timeoutMs?: number}} [options]
   */
  constructor(getToken, {
    fetch: fetchImpl = globalThis.fetch.bind(globalThis), base = '', timeoutMs = 15_000,
  } = {}) {
    this._getToken = getToken;
    this._fetch = fetchImpl;
    this._base = base;
    this._timeoutMs = timeoutMs;
  }

  async request(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = await this._getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await this._fetch(this._base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        // A request that hangs (a dropped network) must fail, so callers can retry.
        signal: AbortSignal.timeout(this._timeoutMs),
      });
    } catch (error) {
      throw new ApiError(0, 'unreachable', `the server cannot be reached (${error.message})`);
    }
    const payload = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = payload?.error ?? {};
      throw new ApiError(
        response.status,
        typeof detail.code === 'string' ? detail.code : `http_${response.status}`,
        typeof detail.message === 'string' ? detail.message : response.statusText || 'request failed',
      );
    }
    return payload;
  }

  async listWorkers() {
    return (await this.request('GET', '/api/workers')).workers;
  }

  getWorker(id) {
    return this.request('GET', `/api/workers/${encodeURIComponent(id)}`);
  }

  createWorker(fields) {
    return this.request('POST', '/api/workers', fields);
  }

  startWorker(id) {
    return this.request('POST', `/api/workers/${encodeURIComponent(id)}/start`);
  }

  stopWorker(id) {
    return this.request('POST', `/api/workers/${encodeURIComponent(id)}/stop`);
  }

  terminateWorker(id) {
    return this.request('DELETE', `/api/workers/${encodeURIComponent(id)}`);
  }

  labs(id) {
    return this.request('GET', `/api/workers/${encodeURIComponent(id)}/labs`);
  }

  refreshLabs(id) {
    return this.request('POST', `/api/workers/${encodeURIComponent(id)}/labs/refresh`);
  }

  /** A single-use ticket's stream URL (EventSource cannot send the bearer token). */
  async streamUrl() {
    return (await this.request('POST', '/api/events/tickets')).stream_url;
  }
}
