// Unit tests for the dashboard's realtime client, driven entirely by injected fakes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { RealtimeClient, STATUS, backoffDelay } from '../../relay_service/dashboard/js/sse-client.js';

// ---------------------------------------------------------------- fakes

/** Lets pending promise callbacks (an async getStreamUrl) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** An EventSource that records what the client did and lets the test send frames. */
class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.closed = false;
    this.readyState = 0;
    this.listeners = new Map();
  }

  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(listener);
  }

  close() {
    this.closed = true;
    this.readyState = 2;
  }

  /** A named frame; `data` is sent as is when a string, else as JSON. */
  emit(type, data, lastEventId = '') {
    const text = typeof data === 'string' ? data : JSON.stringify(data);
    for (const listener of this.listeners.get(type) ?? []) {
      listener({ type, data: text, lastEventId });
    }
  }

  /** What a browser does on a network error or a non-200 answer. */
  fail() {
    this.readyState = 2;
    for (const listener of this.listeners.get('error') ?? []) listener({ type: 'error' });
  }

  connect({ heartbeatSeconds = 30, replay = { requested: null, status: 'none', replayed: 0 } } = {}) {
    this.emit('connected', {
      client_id: 'c-1',
      server_time: '2025-01-01T00:00:00Z',
      heartbeat_seconds: heartbeatSeconds,
      replay,
    });
  }

  /** A bus event frame as the relay sends it. */
  bus(id, type = 'worker.status.updated', data = {}) {
    this.emit(type, wire(id, type, data), id);
  }
}

function wire(id, type = 'worker.metrics.updated', data = {}) {
  return { id, type, time: '2025-01-01T00:00:00Z', worker_id: 'w-1', version: 1, data };
}

/** setTimeout/clearTimeout on a clock that only moves when the test says so. */
function fakeClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  return {
    setTimeout: (fn, ms) => {
      const id = nextId++;
      timers.set(id, { fn, at: now + ms, ms });
      return id;
    },
    clearTimeout: (id) => timers.delete(id),
    /** Delays of the timers still pending, in creation order. */
    pending: () => [...timers.values()].map((timer) => timer.ms),
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        const due = [...timers.entries()]
          .filter(([, timer]) => timer.at <= end)
          .sort(([, a], [, b]) => a.at - b.at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
        await settle();
      }
      now = end;
      await settle();
    },
  };
}

class FakeDocument extends EventTarget {
  visibilityState = 'visible';

  show(state) {
    this.visibilityState = state;
    this.dispatchEvent(new Event('visibilitychange'));
  }
}

/** A client wired to fakes (random = 0, so backoff delays are 500, 1000, 2000 ...). */
function setup(options = {}) {
  const clock = fakeClock();
  const sources = [];
  class EventSource extends FakeEventSource {
    constructor(url) {
      super(url);
      sources.push(this);
    }
  }
  const client = new RealtimeClient({
    EventSource,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0,
    document: undefined,
    window: undefined,
    ...options,
  });
  const statuses = [];
  client.onStatus((status, detail) => statuses.push({ status, detail }));
  return { client, clock, sources, statuses, latest: () => sources.at(-1) };
}

/** getStreamUrl handing out a new ticket per call. */
function ticketIssuer(base = '/api/events/stream') {
  const issuer = async () => `${base}?ticket=t${++issuer.calls}`;
  issuer.calls = 0;
  return issuer;
}

function collect(client, type) {
  const received = [];
  client.on(type, (payload, meta) => received.push({ payload, meta }));
  return received;
}

// ---------------------------------------------------------------- backoffDelay

describe('backoffDelay', () => {
  it('doubles from half the initial delay with no jitter', () => {
    const delays = [1, 2, 3, 4, 5].map((attempt) => backoffDelay(attempt, { random: () => 0 }));
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000]);
  });

  it('adds up to half the base as jitter', () => {
    assert.equal(backoffDelay(1, { random: () => 0.999 }), 999.5);
    assert.equal(backoffDelay(3, { random: () => 0.5 }), 3000);
  });

  it('is capped at 30 seconds including jitter', () => {
    assert.equal(backoffDelay(6, { random: () => 0 }), 15000);
    assert.equal(backoffDelay(50, { random: () => 0.999 }), 29985);
    for (let attempt = 1; attempt <= 100; attempt += 1) {
      for (const random of [() => 0, () => 0.999]) {
        const delay = backoffDelay(attempt, { random });
        assert.ok(delay <= 30000 && delay >= 500, `attempt ${attempt}: ${delay}`);
      }
    }
  });

  it('honours custom initial and maximum delays', () => {
    assert.equal(backoffDelay(1, { initialMs: 200, maxMs: 1000, random: () => 0 }), 100);
    assert.equal(backoffDelay(9, { initialMs: 200, maxMs: 1000, random: () => 0 }), 500);
  });
});

// ---------------------------------------------------------------- status

describe('status', () => {
  it('is disconnected, then reconnecting while connecting, then connected on the connected frame', () => {
    const { client, latest, statuses } = setup();
    assert.equal(client.status, STATUS.DISCONNECTED);
    client.start();
    assert.equal(client.status, STATUS.RECONNECTING);
    latest().emit('open', {}); // an open stream is not yet a connected one
    assert.equal(client.status, STATUS.RECONNECTING);
    latest().connect();
    assert.equal(client.status, STATUS.CONNECTED);
    assert.deepEqual(
      statuses.map((entry) => entry.status),
      ['reconnecting', 'connected'],
    );
    assert.equal(statuses[1].detail.clientId, 'c-1');
  });

  it('starts once however often start() is called', () => {
    const { client, sources } = setup();
    client.start();
    client.start();
    assert.equal(sources.length, 1);
  });

  it('reports every change once, not repeated states', () => {
    const { client, latest, clock, statuses } = setup();
    client.start();
    latest().fail();
    return clock.advance(500).then(() => {
      latest().fail();
      assert.deepEqual(
        statuses.map((entry) => entry.status),
        ['reconnecting'],
      );
    });
  });
});

// ---------------------------------------------------------------- reconnect and backoff

describe('reconnect with backoff', () => {
  it('closes the EventSource on error so the browser never retries the used ticket', async () => {
    const { client, latest } = setup({ getStreamUrl: ticketIssuer() });
    client.start();
    await settle();
    const first = latest();
    first.fail();
    assert.equal(first.closed, true);
  });

  it('waits backoffDelay(1), (2), (3) between attempts that fail before connected', async () => {
    const getStreamUrl = ticketIssuer();
    const { client, clock, sources } = setup({ getStreamUrl });
    client.start();
    await settle();
    for (const [index, delay] of [500, 1000, 2000].entries()) {
      sources.at(-1).fail();
      assert.deepEqual(clock.pending(), [delay]);
      await clock.advance(delay - 1);
      assert.equal(sources.length, index + 1, 'no attempt before the delay is over');
      await clock.advance(1);
      assert.equal(sources.length, index + 2);
    }
    assert.equal(getStreamUrl.calls, 4, 'a fresh ticket for every attempt');
    assert.equal(client.status, STATUS.RECONNECTING);
  });

  it('treats a non-fatal getStreamUrl failure as a failed attempt', async () => {
    let calls = 0;
    const getStreamUrl = async () => {
      calls += 1;
      if (calls < 3) throw Object.assign(new Error('relay down'), { status: 503 });
      return '/api/events/stream?ticket=ok';
    };
    const { client, clock, sources } = setup({ getStreamUrl });
    client.start();
    await settle();
    assert.deepEqual(clock.pending(), [500]);
    await clock.advance(500);
    assert.deepEqual(clock.pending(), [1000]);
    await clock.advance(1000);
    assert.equal(sources.length, 1);
    assert.equal(sources[0].url, '/api/events/stream?ticket=ok');
  });

  it('resets the attempt counter when a connected frame arrives', async () => {
    const { client, clock, latest } = setup();
    client.start();
    latest().fail();
    await clock.advance(500);
    latest().fail();
    await clock.advance(1000);
    latest().connect();
    latest().fail();
    assert.equal(client.status, STATUS.RECONNECTING);
    assert.deepEqual(clock.pending(), [500]);
  });

  it('never waits more than 30 seconds', async () => {
    const { client, clock, latest } = setup({ random: () => 0.999 });
    client.start();
    for (let attempt = 0; attempt < 12; attempt += 1) {
      latest().fail();
      const [delay] = clock.pending();
      assert.ok(delay <= 30000, `attempt ${attempt + 1} waited ${delay}`);
      await clock.advance(delay);
    }
    latest().fail();
    assert.deepEqual(clock.pending(), [29985]);
  });

  for (const error of [
    Object.assign(new Error('no session'), { status: 401 }),
    Object.assign(new Error('forbidden'), { status: 403 }),
    Object.assign(new Error('signed out'), { fatal: true }),
  ]) {
    it(`stops with status error when getStreamUrl fails with ${error.message}`, async () => {
      const { client, clock, sources, statuses } = setup({
        getStreamUrl: async () => {
          throw error;
        },
      });
      client.start();
      await settle();
      assert.equal(client.status, STATUS.ERROR);
      assert.deepEqual(statuses.at(-1).detail, { reason: 'unauthorized', error });
      assert.deepEqual(clock.pending(), []);
      assert.equal(sources.length, 0);
    });
  }

  it('can be started again after an unauthorized stop', async () => {
    let signedIn = false;
    const getStreamUrl = async () => {
      if (!signedIn) throw Object.assign(new Error('no session'), { status: 401 });
      return '/api/events/stream?ticket=t';
    };
    const { client, sources } = setup({ getStreamUrl });
    client.start();
    await settle();
    signedIn = true;
    client.start();
    await settle();
    assert.equal(sources.length, 1);
    assert.equal(client.status, STATUS.RECONNECTING);
  });
});

// ---------------------------------------------------------------- routing

describe('routing', () => {
  it('gives handlers the parsed wire object, and * every bus event', () => {
    const { client, latest } = setup();
    const status = collect(client, 'worker.status.updated');
    const created = collect(client, 'worker.created');
    const all = collect(client, '*');
    client.start();
    latest().connect();
    latest().bus('e1', 'worker.status.updated', { new_status: 'running' });
    latest().bus('e2', 'worker.created', { worker: { id: 'w-1' } });
    assert.deepEqual(status, [
      {
        payload: wire('e1', 'worker.status.updated', { new_status: 'running' }),
        meta: { type: 'worker.status.updated', id: 'e1' },
      },
    ]);
    assert.equal(created.length, 1);
    assert.deepEqual(
      all.map((entry) => entry.meta.type),
      ['worker.status.updated', 'worker.created'],
    );
  });

  it('gives relay events their data object and keeps them away from *', () => {
    const { client, latest } = setup();
    const connected = collect(client, 'connected');
    const heartbeats = collect(client, 'heartbeat');
    const all = collect(client, '*');
    client.start();
    latest().connect();
    latest().emit('heartbeat', { server_time: '2025-01-01T00:00:30Z' });
    assert.equal(connected[0].payload.heartbeat_seconds, 30);
    assert.deepEqual(heartbeats[0].payload, { server_time: '2025-01-01T00:00:30Z' });
    assert.equal(all.length, 0);
  });

  it('ignores malformed JSON with a warning and keeps the stream', (t) => {
    const warn = t.mock.method(console, 'warn', () => {});
    const { client, latest, sources } = setup();
    const received = collect(client, 'worker.status.updated');
    client.start();
    latest().connect();
    latest().emit('worker.status.updated', '{not json', 'e1');
    latest().bus('e2');
    assert.equal(warn.mock.callCount(), 1);
    assert.deepEqual(
      received.map((entry) => entry.payload.id),
      ['e2'],
    );
    assert.equal(sources.length, 1);
    assert.equal(sources[0].closed, false);
    assert.equal(client.status, STATUS.CONNECTED);
  });

  it('unpacks a metrics batch into worker.metrics.updated events, in order', () => {
    const { client, latest } = setup();
    const metrics = collect(client, 'worker.metrics.updated');
    const all = collect(client, '*');
    const batches = collect(client, 'worker.metrics.batch');
    client.start();
    latest().connect();
    const events = [wire('e1'), wire('e2'), wire('e3')];
    latest().emit('worker.metrics.batch', { events }, 'e3');
    assert.deepEqual(
      metrics.map((entry) => entry.payload),
      events,
    );
    assert.deepEqual(
      all.map((entry) => [entry.meta.type, entry.meta.id]),
      [
        ['worker.metrics.updated', 'e1'],
        ['worker.metrics.updated', 'e2'],
        ['worker.metrics.updated', 'e3'],
      ],
    );
    assert.equal(batches.length, 0);
    assert.equal(client.lastEventId, 'e3');
  });

  it('dispatches an event replayed after a reconnect only once', async () => {
    const { client, clock, latest } = setup();
    const all = collect(client, '*');
    client.start();
    latest().connect();
    latest().bus('e1');
    latest().bus('e2');
    latest().fail();
    await clock.advance(500);
    latest().connect();
    latest().bus('e1'); // the replay overlaps what was delivered
    latest().emit('worker.metrics.batch', { events: [wire('e2'), wire('e3')] }, 'e3');
    assert.deepEqual(
      all.map((entry) => entry.meta.id),
      ['e1', 'e2', 'e3'],
    );
  });

  it('remembers a bounded number of ids (the last 2,000)', () => {
    const { client, latest } = setup();
    const all = collect(client, '*');
    client.start();
    latest().connect();
    for (let n = 0; n <= 2000; n += 1) latest().bus(`e${n}`);
    latest().bus('e2000'); // still remembered
    latest().bus('e0'); // forgotten: the oldest of 2,001
    assert.equal(all.length, 2002);
    assert.equal(all.at(-1).meta.id, 'e0');
  });

  it('isolates a handler that throws from other handlers and the stream', (t) => {
    const error = t.mock.method(console, 'error', () => {});
    const { client, latest } = setup();
    client.on('worker.status.updated', () => {
      throw new Error('boom');
    });
    client.onStatus(() => {
      throw new Error('status boom');
    });
    const received = collect(client, 'worker.status.updated');
    client.start();
    latest().connect();
    latest().bus('e1');
    latest().bus('e2');
    assert.equal(received.length, 2);
    assert.equal(client.status, STATUS.CONNECTED);
    assert.equal(client.lastEventId, 'e2');
    assert.ok(error.mock.callCount() >= 3);
  });

  it('stops calling a handler once unsubscribed or removed with off', () => {
    const { client, latest } = setup();
    const seen = [];
    const unsubscribe = client.on('worker.created', (payload) => seen.push(`a:${payload.id}`));
    const other = (payload) => seen.push(`b:${payload.id}`);
    client.on('worker.created', other);
    const statuses = [];
    const stopWatching = client.onStatus((status) => statuses.push(status));
    client.start();
    latest().connect();
    latest().bus('e1', 'worker.created');
    unsubscribe();
    client.off('worker.created', other);
    stopWatching();
    latest().bus('e2', 'worker.created');
    client.stop();
    assert.deepEqual(seen, ['a:e1', 'b:e1']);
    assert.deepEqual(statuses, ['reconnecting', 'connected']);
  });

  it('listens for a type first named in on() after the stream is open, and on later streams', async () => {
    const { client, clock, latest } = setup();
    client.start();
    latest().connect();
    const custom = collect(client, 'worker.imported');
    latest().bus('e1', 'worker.imported');
    latest().fail();
    await clock.advance(500);
    latest().bus('e2', 'worker.imported');
    assert.deepEqual(
      custom.map((entry) => entry.payload.id),
      ['e1', 'e2'],
    );
  });
});

// ---------------------------------------------------------------- resume

describe('resume', () => {
  it('opens the first stream from the initial lastEventId option', async () => {
    const { client, latest } = setup({ getStreamUrl: ticketIssuer(), lastEventId: '01J+A/B C' });
    client.start();
    await settle();
    assert.equal(latest().url, '/api/events/stream?ticket=t1&last_event_id=01J%2BA%2FB%20C');
    assert.equal(client.lastEventId, '01J+A/B C');
  });

  it('adds last_event_id with ? when the URL has no query, and nothing without an id', async () => {
    const plain = setup({ url: '/api/events/stream' });
    plain.client.start();
    assert.equal(plain.latest().url, '/api/events/stream');
    const resumed = setup({ url: '/api/events/stream', lastEventId: 'e9' });
    resumed.client.start();
    assert.equal(resumed.latest().url, '/api/events/stream?last_event_id=e9');
    const filtered = setup({ url: '/api/events/stream?event_types=worker.created', lastEventId: 'e9' });
    filtered.client.start();
    assert.equal(
      filtered.latest().url,
      '/api/events/stream?event_types=worker.created&last_event_id=e9',
    );
  });

  it('advances lastEventId with bus events, not relay events, and resumes from it after an error', async () => {
    const getStreamUrl = ticketIssuer();
    const { client, clock, latest } = setup({ getStreamUrl });
    client.start();
    await settle();
    assert.equal(latest().url, '/api/events/stream?ticket=t1');
    latest().connect();
    latest().bus('e1');
    latest().bus('e2');
    latest().emit('heartbeat', { server_time: 'x' });
    assert.equal(client.lastEventId, 'e2');
    latest().fail();
    await clock.advance(500);
    assert.equal(latest().url, '/api/events/stream?ticket=t2&last_event_id=e2');
  });
});

// ---------------------------------------------------------------- watchdog

describe('watchdog', () => {
  it('replaces a stream that is silent for 2.5 heartbeats and resumes from the last id', async () => {
    const { client, clock, sources, statuses } = setup();
    client.start();
    sources[0].connect({ heartbeatSeconds: 30 });
    sources[0].bus('e1');
    await clock.advance(74999);
    sources[0].emit('heartbeat', { server_time: 'x' }); // resets the watchdog
    await clock.advance(74999);
    assert.equal(sources[0].closed, false);
    await clock.advance(1);
    assert.equal(sources[0].closed, true);
    assert.equal(client.status, STATUS.RECONNECTING);
    assert.equal(statuses.at(-1).detail.reason, 'watchdog');
    await clock.advance(500);
    assert.equal(sources.length, 2);
    assert.equal(sources[1].url, '/api/events/stream?last_event_id=e1');
  });

  it('learns the timeout from heartbeat_seconds, and any frame resets it', async () => {
    const { client, clock, sources } = setup();
    client.start();
    sources[0].connect({ heartbeatSeconds: 10 });
    await clock.advance(20000);
    sources[0].bus('e1'); // an event counts as a sign of life too
    await clock.advance(24999);
    assert.equal(sources[0].closed, false);
    await clock.advance(1);
    assert.equal(sources[0].closed, true);
  });

  it('uses heartbeatTimeoutMs when given', async () => {
    const { client, clock, sources } = setup({ heartbeatTimeoutMs: 5000 });
    client.start();
    sources[0].connect({ heartbeatSeconds: 30 });
    await clock.advance(5000);
    assert.equal(sources[0].closed, true);
  });
});

// ---------------------------------------------------------------- relay events

describe('system.sse.shutdown', () => {
  it('reconnects after exactly reconnect_after_ms, from the last id', async () => {
    const { client, clock, sources, statuses } = setup({ getStreamUrl: ticketIssuer() });
    const notices = collect(client, 'system.sse.shutdown');
    client.start();
    await settle();
    sources[0].connect();
    sources[0].bus('e1');
    sources[0].emit('system.sse.shutdown', { reason: 'relay stopping', reconnect_after_ms: 1234 });
    assert.equal(notices[0].payload.reason, 'relay stopping');
    assert.equal(sources[0].closed, true);
    assert.equal(client.status, STATUS.RECONNECTING);
    assert.equal(statuses.at(-1).detail.reason, 'shutdown');
    sources[0].fail(); // the server closing the stream is not a failure
    assert.deepEqual(clock.pending(), [1234]);
    await clock.advance(1233);
    assert.equal(sources.length, 1);
    await clock.advance(1);
    assert.equal(sources.length, 2);
    assert.equal(sources[1].url, '/api/events/stream?ticket=t2&last_event_id=e1');
  });

  it('keeps reconnecting on later errors (the legacy client stopped after a shutdown)', async () => {
    const { client, clock, sources } = setup();
    client.start();
    sources[0].connect();
    sources[0].emit('system.sse.shutdown', { reason: 'stop', reconnect_after_ms: 2000 });
    await clock.advance(2000);
    sources[1].fail(); // the new relay is not up yet
    await clock.advance(500);
    assert.equal(sources.length, 3);
    sources[2].connect();
    sources[2].fail(); // and a later drop of a healthy stream
    assert.equal(client.status, STATUS.RECONNECTING);
    await clock.advance(500);
    assert.equal(sources.length, 4);
  });
});

describe('auth.expired', () => {
  it('fetches a fresh ticket and reconnects at once from the last id', async () => {
    const getStreamUrl = ticketIssuer();
    const { client, clock, sources, statuses } = setup({ getStreamUrl });
    client.start();
    await settle();
    sources[0].connect();
    sources[0].bus('e7');
    sources[0].emit('auth.expired', {});
    assert.equal(sources[0].closed, true);
    assert.equal(client.status, STATUS.RECONNECTING);
    assert.equal(statuses.at(-1).detail.reason, 'auth.expired');
    await settle();
    sources[0].fail();
    assert.equal(sources.length, 2);
    assert.equal(sources[1].url, '/api/events/stream?ticket=t2&last_event_id=e7');
    assert.equal(getStreamUrl.calls, 2);
    assert.deepEqual(clock.pending(), [75000], 'only the new stream\'s watchdog');
  });
});

describe('resync', () => {
  it('goes to resync handlers and changes nothing else', () => {
    const { client, clock, sources, statuses } = setup();
    const resyncs = collect(client, 'resync');
    client.start();
    sources[0].connect({ replay: { requested: 'old', status: 'resync', replayed: 0 } });
    sources[0].bus('e1');
    const before = statuses.length;
    sources[0].emit('resync', { reason: 'cursor too old' });
    assert.deepEqual(resyncs[0].payload, { reason: 'cursor too old' });
    assert.equal(client.status, STATUS.CONNECTED);
    assert.equal(statuses.length, before);
    assert.equal(sources.length, 1);
    assert.equal(sources[0].closed, false);
    assert.equal(client.lastEventId, 'e1');
    assert.deepEqual(clock.pending(), [75000]);
  });
});

// ---------------------------------------------------------------- visibility and network

describe('visibility and network', () => {
  it('reconnects at once when the page becomes visible during a backoff wait, backoff reset', async () => {
    const document = new FakeDocument();
    const { client, clock, sources } = setup({ document });
    client.start();
    sources[0].fail();
    await clock.advance(500);
    sources[1].fail();
    assert.deepEqual(clock.pending(), [1000]);
    document.show('visible');
    assert.equal(sources.length, 3);
    sources[2].fail();
    assert.deepEqual(clock.pending(), [500], 'the attempt counter started again');
  });

  it('does not connect a hidden page when a retry comes due, and resumes when it is shown', async () => {
    const document = new FakeDocument();
    const { client, clock, sources, statuses } = setup({ document });
    client.start();
    sources[0].connect();
    sources[0].bus('e1');
    document.show('hidden');
    assert.equal(sources.length, 1, 'an open stream stays open while hidden');
    sources[0].fail();
    await clock.advance(500);
    assert.equal(sources.length, 1);
    assert.equal(client.status, STATUS.DISCONNECTED);
    assert.deepEqual(statuses.at(-1).detail, { reason: 'hidden' });
    assert.deepEqual(clock.pending(), []);
    document.show('visible');
    assert.equal(sources.length, 2);
    assert.equal(sources[1].url, '/api/events/stream?last_event_id=e1');
    assert.equal(client.status, STATUS.RECONNECTING);
  });

  it('leaves a connected stream alone when the page becomes visible', () => {
    const document = new FakeDocument();
    const { client, sources } = setup({ document });
    client.start();
    sources[0].connect();
    document.show('visible');
    assert.equal(sources.length, 1);
    assert.equal(sources[0].closed, false);
  });

  it('reconnects at once when the browser comes back online', async () => {
    const window = new EventTarget();
    const { client, clock, sources } = setup({ window });
    client.start();
    sources[0].connect();
    sources[0].fail();
    assert.equal(sources.length, 1);
    window.dispatchEvent(new Event('online'));
    assert.equal(sources.length, 2);
    assert.deepEqual(clock.pending(), [75000]);
  });
});

// ---------------------------------------------------------------- closed streams

describe('a replaced stream', () => {
  it('is ignored: its late frames and errors change nothing', async () => {
    const { client, clock, sources, statuses } = setup();
    const all = collect(client, '*');
    client.start();
    sources[0].connect();
    sources[0].bus('e1');
    client.reconnectNow();
    const statusCount = statuses.length;
    sources[0].bus('e2');
    sources[0].connect();
    sources[0].emit('system.sse.shutdown', { reason: 'late', reconnect_after_ms: 1 });
    sources[0].fail();
    assert.deepEqual(
      all.map((entry) => entry.meta.id),
      ['e1'],
    );
    assert.equal(client.lastEventId, 'e1');
    assert.equal(statuses.length, statusCount);
    assert.equal(client.status, STATUS.RECONNECTING);
    assert.deepEqual(clock.pending(), [75000]);
    assert.equal(sources.length, 2);
  });
});

// ---------------------------------------------------------------- reconnectNow and stop

describe('reconnectNow', () => {
  it('drops the stream and connects at once with the last id and a reset backoff', async () => {
    const { client, clock, sources } = setup();
    client.start();
    sources[0].fail();
    await clock.advance(500);
    sources[1].connect();
    sources[1].bus('e3');
    client.reconnectNow();
    assert.equal(sources[1].closed, true);
    assert.equal(sources[2].url, '/api/events/stream?last_event_id=e3');
    sources[2].fail();
    assert.deepEqual(clock.pending(), [500]);
  });

  it('discards a ticket that arrives for an attempt it replaced', async () => {
    const resolvers = [];
    const getStreamUrl = () => new Promise((resolve) => resolvers.push(resolve));
    const { client, sources } = setup({ getStreamUrl });
    client.start();
    client.reconnectNow();
    resolvers[0]('/stale?ticket=1');
    resolvers[1]('/fresh?ticket=2');
    await settle();
    assert.deepEqual(
      sources.map((source) => source.url),
      ['/fresh?ticket=2'],
    );
  });

  it('does nothing when the client is stopped', () => {
    const { client, sources } = setup();
    client.reconnectNow();
    assert.equal(sources.length, 0);
    assert.equal(client.status, STATUS.DISCONNECTED);
  });
});

describe('stop', () => {
  it('closes the stream and leaves no timer behind', async () => {
    const { client, clock, sources, statuses } = setup();
    client.start();
    sources[0].connect();
    client.stop();
    assert.equal(sources[0].closed, true);
    assert.equal(client.status, STATUS.DISCONNECTED);
    assert.deepEqual(statuses.at(-1).detail, { reason: 'stopped' });
    assert.deepEqual(clock.pending(), []);
    await clock.advance(10 * 60 * 1000);
    assert.equal(sources.length, 1);
  });

  it('cancels a pending backoff retry and a pending shutdown reconnect', async () => {
    for (const interrupt of [
      (source) => source.fail(),
      (source) => source.emit('system.sse.shutdown', { reason: 'x', reconnect_after_ms: 100 }),
    ]) {
      const { client, clock, sources } = setup();
      client.start();
      sources[0].connect();
      interrupt(sources[0]);
      assert.equal(clock.pending().length, 1);
      client.stop();
      assert.deepEqual(clock.pending(), []);
      await clock.advance(60000);
      assert.equal(sources.length, 1);
    }
  });

  it('opens nothing when a ticket arrives after stop, and ignores later page events', async () => {
    let resolveTicket;
    const getStreamUrl = () => new Promise((resolve) => (resolveTicket = resolve));
    const document = new FakeDocument();
    const window = new EventTarget();
    const { client, clock, sources } = setup({ getStreamUrl, document, window });
    client.start();
    client.stop();
    resolveTicket('/api/events/stream?ticket=late');
    await settle();
    document.show('visible');
    window.dispatchEvent(new Event('online'));
    await settle();
    assert.equal(sources.length, 0);
    assert.deepEqual(clock.pending(), []);
    assert.equal(client.status, STATUS.DISCONNECTED);
  });

  it('may be called from a status handler without leaving a retry behind', async () => {
    const { client, clock, sources } = setup();
    client.start();
    sources[0].connect();
    client.onStatus((status) => {
      if (status === STATUS.RECONNECTING) client.stop();
    });
    sources[0].fail();
    assert.deepEqual(clock.pending(), []);
    assert.equal(client.status, STATUS.DISCONNECTED);
  });
});
