/**
 * The dashboard's realtime client: one Server-Sent Events stream from the relay, routed to
 * handlers by event type, resumed from the last event id after every interruption.
 *
 * Stream tickets are single use, so the browser's own EventSource retry (which reuses the
 * URL) can never succeed: every `error` closes the EventSource and this client reconnects
 * with a fresh URL from `getStreamUrl()`, adding `last_event_id` so the relay replays what
 * was missed.
 *
 * Works in browsers and in node (every global is injectable; none is read at import time).
 */

/** Connection states reported to `onStatus` handlers. */
export const STATUS = Object.freeze({
  CONNECTED: 'connected',
  RECONNECTING: 'reconnecting',
  DISCONNECTED: 'disconnected',
  ERROR: 'error',
});

const RELAY_TYPES = ['connected', 'heartbeat', 'resync', 'system.sse.shutdown', 'auth.expired'];
const BUS_TYPES = [
  'worker.created',
  'worker.status.updated',
  'worker.metrics.updated',
  'worker.labs.updated',
  'worker.terminated',
];
const METRICS_BATCH = 'worker.metrics.batch';
const FRAME_TYPES = [...RELAY_TYPES, ...BUS_TYPES, METRICS_BATCH];
// EventSource's own events and the wildcard are never frame names to listen for.
const NOT_FRAMES = new Set(['*', 'open', 'error', 'message']);
const REMEMBERED_IDS = 2000;
const DEFAULT_HEARTBEAT_TIMEOUT_MS = 75000;

/**
 * Delay before reconnect attempt `attempt` (1, 2, ...): exponential with "equal jitter",
 * so a relay restart does not bring every client back in the same millisecond.
 * @param {number} attempt consecutive failed attempts so far, at least 1
 * @param {{initialMs?: number, maxMs?: number, random?: () => number}} [options]
 * @returns {number} milliseconds in [base/2, base), base = min(maxMs, initialMs * 2^(attempt-1))
 */
export function backoffDelay(attempt, { initialMs = 1000, maxMs = 30000, random = Math.random } = {}) {
  const base = Math.min(maxMs, initialMs * 2 ** (Math.max(1, attempt) - 1));
  return base / 2 + (random() * base) / 2;
}

/** A URL with `last_event_id` added as a query parameter (other parameters kept). */
function withLastEventId(url, lastEventId) {
  if (lastEventId == null || lastEventId === '') return url;
  const hashAt = url.indexOf('#');
  const [path, hash] = hashAt < 0 ? [url, ''] : [url.slice(0, hashAt), url.slice(hashAt)];
  const separator = !path.includes('?') ? '?' : /[?&]$/.test(path) ? '' : '&';
  return `${path}${separator}last_event_id=${encodeURIComponent(lastEventId)}${hash}`;
}

function isFatal(error) {
  return error?.fatal === true || error?.status === 401 || error?.status === 403;
}

function safeCall(handler, args, label) {
  try {
    handler(...args);
  } catch (error) {
    console.error(`[sse-client] ${label} handler failed`, error);
  }
}

/** One realtime stream with its own reconnect, resume, de-duplication and watchdog. */
export class RealtimeClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url] stream URL used when there is no `getStreamUrl`
   * @param {() => Promise<string>} [options.getStreamUrl] a fresh URL (new ticket) per attempt;
   *   an error with `.status` 401/403 or `.fatal === true` stops the client with status 'error'
   * @param {string|null} [options.lastEventId] cursor for the first connect
   * @param {number} [options.initialBackoffMs] @param {number} [options.maxBackoffMs]
   * @param {number} [options.heartbeatTimeoutMs] silence after which the stream is replaced
   *   (default 2.5 × the relay's heartbeat interval)
   * @param {Function} [options.EventSource] @param {Function} [options.setTimeout]
   * @param {Function} [options.clearTimeout] @param {() => number} [options.random]
   * @param {EventTarget} [options.document] @param {EventTarget} [options.window]
   */
  constructor(options = {}) {
    this._url = options.url ?? '/api/events/stream';
    this._getStreamUrl = options.getStreamUrl ?? null;
    this._lastEventId = options.lastEventId ?? null;
    this._backoff = {
      initialMs: options.initialBackoffMs ?? 1000,
      maxMs: options.maxBackoffMs ?? 30000,
      random: options.random ?? Math.random,
    };
    this._fixedHeartbeatTimeoutMs = options.heartbeatTimeoutMs ?? null;
    this._heartbeatTimeoutMs = this._fixedHeartbeatTimeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    this._EventSource = options.EventSource ?? null; // globalThis.EventSource, read when used
    this._setTimeout = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this._document = 'document' in options ? options.document : globalThis.document;
    this._window = 'window' in options ? options.window : globalThis.window;

    this._status = STATUS.DISCONNECTED;
    this._handlers = new Map(); // type -> Set of handlers
    this._statusHandlers = new Set();
    this._seenIds = new Set(); // insertion-ordered, so the oldest is dropped first
    this._running = false;
    this._attempt = 0; // consecutive failed attempts since the last `connected`
    this._seq = 0; // bumped per attempt; a stale getStreamUrl result is discarded
    this._opening = false; // waiting on getStreamUrl
    this._source = null;
    this._sourceTypes = new Set(); // frame types listened for on the current source
    this._retryTimer = null;
    this._watchdogTimer = null;
    this._onVisibility = () => {
      if (this._document?.visibilityState === 'visible') this._resumeIfWaiting('visible');
    };
    this._onOnline = () => this._resumeIfWaiting('online');
  }

  /** The current STATUS value. */
  get status() {
    return this._status;
  }

  /** The id of the last bus event received (the resume cursor), or null. */
  get lastEventId() {
    return this._lastEventId;
  }

  /**
   * Call `handler(payload, meta)` for each event of `type` ('*' = every bus event).
   * @returns {() => void} unsubscribe
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    if (this._source) this._listen(this._source, type); // EventSource has no catch-all
    return () => this.off(type, handler);
  }

  /** Remove a handler added with `on`. */
  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /**
   * Call `handler(status, detail)` on every status change.
   * @returns {() => void} unsubscribe
   */
  onStatus(handler) {
    this._statusHandlers.add(handler);
    return () => this._statusHandlers.delete(handler);
  }

  /** Begin connecting (does nothing if already started). */
  start() {
    if (this._running) return;
    this._running = true;
    this._document?.addEventListener?.('visibilitychange', this._onVisibility);
    this._window?.addEventListener?.('online', this._onOnline);
    this._connect({ reason: 'start' });
  }

  /** Close the stream and cancel every timer; nothing reconnects until `start()`. */
  stop() {
    this._halt();
    this._setStatus(STATUS.DISCONNECTED, { reason: 'stopped' });
  }

  /** Drop the current stream (if any) and connect at once from the last id, backoff reset. */
  reconnectNow() {
    this._restart('manual');
  }

  _halt() {
    this._running = false;
    this._seq += 1;
    this._opening = false;
    this._document?.removeEventListener?.('visibilitychange', this._onVisibility);
    this._window?.removeEventListener?.('online', this._onOnline);
    this._clearRetry();
    this._closeSource();
  }

  _restart(reason) {
    if (!this._running) return;
    this._attempt = 0;
    this._connect({ reason });
  }

  /** Waiting for a retry (or for the page to become visible): nothing in flight. */
  _resumeIfWaiting(reason) {
    if (this._running && !this._source && !this._opening) this._restart(reason);
  }

  async _connect(detail) {
    this._clearRetry();
    this._closeSource();
    const seq = ++this._seq;
    this._opening = true;
    this._setStatus(STATUS.RECONNECTING, detail);
    if (seq !== this._seq) return; // a status handler stopped or restarted the client
    let url;
    try {
      url = this._getStreamUrl ? await this._getStreamUrl() : this._url;
    } catch (error) {
      if (seq !== this._seq) return;
      this._opening = false;
      if (isFatal(error)) {
        this._halt();
        this._setStatus(STATUS.ERROR, { reason: 'unauthorized', error });
      } else {
        this._retryWithBackoff({ reason: 'error', error });
      }
      return;
    }
    if (seq !== this._seq) return; // stopped or restarted while fetching a ticket
    this._opening = false;
    this._open(withLastEventId(url, this._lastEventId));
  }

  _open(url) {
    let source;
    try {
      const EventSourceClass = this._EventSource ?? globalThis.EventSource;
      source = new EventSourceClass(url);
    } catch (error) {
      this._retryWithBackoff({ reason: 'error', error });
      return;
    }
    this._source = source;
    this._sourceTypes = new Set();
    source.addEventListener('error', () => {
      if (source === this._source) this._lose({ reason: 'error' });
    });
    for (const type of [...FRAME_TYPES, ...this._handlers.keys()]) this._listen(source, type);
    this._armWatchdog(); // also catches an attempt that never sends `connected`
  }

  _listen(source, type) {
    if (NOT_FRAMES.has(type) || this._sourceTypes.has(type)) return;
    this._sourceTypes.add(type);
    source.addEventListener(type, (event) => {
      if (source === this._source) this._onFrame(type, event);
    });
  }

  _closeSource() {
    this._clearWatchdog();
    this._source?.close();
    this._source = null;
  }

  /** The stream failed or went silent: close it and retry after a backoff delay. */
  _lose(detail) {
    this._closeSource();
    this._retryWithBackoff(detail);
  }

  _retryWithBackoff(detail) {
    this._attempt += 1;
    const delayMs = backoffDelay(this._attempt, this._backoff);
    this._retryAfter(delayMs, { ...detail, attempt: this._attempt, delayMs });
  }

  _retryAfter(delayMs, detail) {
    this._clearRetry();
    this._retryTimer = this._setTimeout(() => {
      this._retryTimer = null;
      if (this._document?.visibilityState === 'hidden') {
        // No point reconnecting a hidden tab; `visibilitychange` resumes it.
        this._setStatus(STATUS.DISCONNECTED, { reason: 'hidden' });
      } else {
        this._connect({ reason: 'retry', attempt: this._attempt });
      }
    }, delayMs);
    // After the timer exists, so a status handler that calls stop() can cancel it.
    this._setStatus(STATUS.RECONNECTING, detail);
  }

  _clearRetry() {
    if (this._retryTimer !== null) this._clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _armWatchdog() {
    this._clearWatchdog();
    this._watchdogTimer = this._setTimeout(() => {
      this._watchdogTimer = null;
      this._lose({ reason: 'watchdog' });
    }, this._heartbeatTimeoutMs);
  }

  _clearWatchdog() {
    if (this._watchdogTimer !== null) this._clearTimeout(this._watchdogTimer);
    this._watchdogTimer = null;
  }

  _onFrame(type, event) {
    this._armWatchdog(); // any frame, even an unreadable one, proves the stream is alive
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      console.warn(`[sse-client] ignored a ${type} frame with malformed JSON`, event.data);
      return;
    }
    switch (type) {
      case 'connected':
        return this._onConnected(payload);
      case 'system.sse.shutdown': {
        // Not a failure: reconnect after the relay's own (jittered) delay, not a backoff.
        // State changes before handlers run, so a handler may still call stop().
        const requested = Number(payload?.reconnect_after_ms);
        const delayMs = Number.isFinite(requested) && requested >= 0 ? requested : 0;
        this._closeSource();
        this._retryAfter(delayMs, { reason: 'shutdown', delayMs });
        return this._dispatch(type, payload, { type, id: null });
      }
      case 'auth.expired':
        this._restart('auth.expired'); // fresh ticket, same cursor, no backoff
        return this._dispatch(type, payload, { type, id: null });
      case METRICS_BATCH:
        if (!Array.isArray(payload?.events)) {
          console.warn('[sse-client] ignored a metrics batch without an events list', payload);
          return;
        }
        for (const element of payload.events) this._onBusEvent('worker.metrics.updated', element);
        return;
      default:
        if (RELAY_TYPES.includes(type)) return this._dispatch(type, payload, { type, id: null });
        return this._onBusEvent(type, payload);
    }
  }

  _onConnected(payload) {
    this._attempt = 0;
    const seconds = Number(payload?.heartbeat_seconds);
    if (this._fixedHeartbeatTimeoutMs === null && seconds > 0) {
      this._heartbeatTimeoutMs = 2.5 * seconds * 1000;
      this._armWatchdog();
    }
    this._setStatus(STATUS.CONNECTED, { clientId: payload?.client_id, replay: payload?.replay });
    this._dispatch('connected', payload, { type: 'connected', id: null });
  }

  _onBusEvent(type, wire) {
    const id = wire?.id == null ? null : String(wire.id);
    if (id !== null) {
      // A replay can overlap what was already delivered: each id is dispatched once.
      if (this._seenIds.has(id)) return;
      this._seenIds.add(id);
      if (this._seenIds.size > REMEMBERED_IDS) {
        this._seenIds.delete(this._seenIds.values().next().value);
      }
      this._lastEventId = id;
    }
    const meta = { type, id };
    this._dispatch(type, wire, meta);
    this._dispatch('*', wire, meta);
  }

  _dispatch(type, payload, meta) {
    for (const handler of [...(this._handlers.get(type) ?? [])]) {
      safeCall(handler, [payload, meta], type);
    }
  }

  _setStatus(status, detail) {
    if (status === this._status) return;
    this._status = status;
    for (const handler of [...this._statusHandlers]) safeCall(handler, [status, detail], 'status');
  }
}
