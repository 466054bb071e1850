// Unit tests for the dashboard's FleetStore: REST snapshots and stream events merged by
// per-aspect worker versions.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { FleetStore, METRICS } from '../../relay_service/dashboard/js/store.js';

// ---------------------------------------------------------------- builders

let nextEventId = 0;

/** A wire event `{id, type, time, worker_id, version, data}`. */
function event(type, workerId, version, data = {}, time = `2026-11-30T08:00:${String(version % 60).padStart(2, '0')}Z`) {
  nextEventId += 1;
  return { id: `evt-${nextEventId}`, type, time, worker_id: workerId, version, data };
}

function statusEvent(workerId, version, newStatus, extra = {}) {
  return event('worker.status.updated', workerId, version, {
    worker_id: workerId,
    old_status: 'unknown',
    new_status: newStatus,
    ec2_state: newStatus,
    transition_started_at: null,
    reason: 'test',
    ...extra,
  });
}

function metricsEvent(workerId, version, values = {}) {
  return event('worker.metrics.updated', workerId, version, {
    worker_id: workerId,
    cpu_utilization: 10,
    memory_utilization: 20,
    storage_utilization: 30,
    labs_count: 0,
    running_nodes: 0,
    total_nodes: 0,
    collected_at: '2026-11-30T08:00:00Z',
    ...values,
  });
}

function lab(n, owner = 'alice') {
  return { lab_id: `lab-${n}`, title: `Lab ${n}`, state: 'STARTED', node_count: n, owner };
}

function labsEvent(workerId, version, labs) {
  return event('worker.labs.updated', workerId, version, {
    worker_id: workerId,
    labs,
    added: labs.map((l) => l.lab_id),
    removed: [],
    changed: [],
    trigger: 'test',
  });
}

function terminatedEvent(workerId, version, by = 'admin') {
  return event('worker.terminated', workerId, version, {
    worker_id: workerId,
    terminated_at: '2026-11-30T09:00:00Z',
    terminated_by: by,
  });
}

/** A full WorkerView as the REST API and `worker.created` carry it. */
function view(workerId, version, fields = {}) {
  return {
    worker_id: workerId,
    name: `name-${workerId}`,
    owner: 'alice',
    status: 'running',
    ec2_state: 'running',
    transition_started_at: null,
    instance_id: `i-${workerId}`,
    instance_type: 'c5.2xlarge',
    region: 'eu-west-1',
    cpu_utilization: 11,
    memory_utilization: 22,
    storage_utilization: 33,
    labs_count: 0,
    running_nodes: 0,
    total_nodes: 0,
    metrics_collected_at: '2026-11-30T07:59:00Z',
    created_at: '2026-11-30T07:00:00Z',
    updated_at: '2026-11-30T07:59:00Z',
    version,
    ...fields,
  };
}

/** A store with a recording listener. */
function recordingStore(options) {
  const store = new FleetStore(options);
  const changes = [];
  store.subscribe((change) => changes.push(change));
  return { store, changes };
}

// ---------------------------------------------------------------- tests

describe('FleetStore.apply: versions', () => {
  it('does not apply a duplicate event and does not call listeners for it', () => {
    const { store, changes } = recordingStore();
    const first = statusEvent('w1', 5, 'running');
    assert.equal(store.apply(first), true);
    assert.equal(changes.length, 1);
    assert.deepEqual([...changes[0].aspects], ['status']);

    assert.equal(store.apply({ ...first }), false);
    assert.equal(changes.length, 1, 'no listener call for a duplicate');
    assert.equal(store.get('w1').status, 'running');
  });

  it('does not let a stale (lower version) event overwrite newer data', () => {
    const { store, changes } = recordingStore();
    assert.equal(store.apply(statusEvent('w1', 7, 'stopped')), true);
    assert.equal(store.apply(statusEvent('w1', 6, 'running')), false);
    assert.equal(store.get('w1').status, 'stopped');
    assert.equal(store.get('w1').version, 7);
    assert.equal(changes.length, 1);
  });

  it('lands out-of-order events on different aspects (metrics v6 then status v5)', () => {
    const { store } = recordingStore();
    assert.equal(store.apply(metricsEvent('w1', 6, { cpu_utilization: 66 })), true);
    assert.equal(store.apply(statusEvent('w1', 5, 'stopping', {
      transition_started_at: '2026-11-30T08:00:00Z',
    })), true);
    const worker = store.get('w1');
    assert.equal(worker.status, 'stopping');
    assert.equal(worker.transition_started_at, '2026-11-30T08:00:00Z');
    assert.equal(worker.cpu_utilization, 66);
    assert.equal(worker.version, 6, 'the view keeps the highest version seen');
  });

  it('keeps the newer of two out-of-order events on the same aspect', () => {
    const { store } = recordingStore();
    assert.equal(store.apply(metricsEvent('w1', 9, { cpu_utilization: 90 })), true);
    assert.equal(store.apply(metricsEvent('w1', 8, { cpu_utilization: 80 })), false);
    assert.equal(store.get('w1').cpu_utilization, 90);
    assert.deepEqual(store.history('w1', 'cpu_utilization'), [90], 'the stale sample is not recorded');
  });

  it('maps metrics event fields onto the view (collected_at → metrics_collected_at)', () => {
    const { store } = recordingStore();
    store.apply(metricsEvent('w1', 3, {
      cpu_utilization: 1.5, memory_utilization: 2.5, storage_utilization: 3.5,
      running_nodes: 4, total_nodes: 9, labs_count: 2, collected_at: '2026-11-30T08:10:00Z',
    }));
    const worker = store.get('w1');
    assert.equal(worker.cpu_utilization, 1.5);
    assert.equal(worker.memory_utilization, 2.5);
    assert.equal(worker.storage_utilization, 3.5);
    assert.equal(worker.running_nodes, 4);
    assert.equal(worker.total_nodes, 9);
    assert.equal(worker.labs_count, 2);
    assert.equal(worker.metrics_collected_at, '2026-11-30T08:10:00Z');
  });
});

describe('FleetStore: snapshots', () => {
  it('keeps newer event data when an older snapshot row is loaded afterwards', () => {
    const { store } = recordingStore();
    store.apply(statusEvent('w1', 7, 'stopped'));
    store.load([view('w1', 5, { status: 'running', name: 'alpha', cpu_utilization: 55 })]);
    const worker = store.get('w1');
    assert.equal(worker.status, 'stopped', 'the v7 status survives the v5 snapshot');
    assert.equal(worker.name, 'alpha', 'identity comes from the snapshot');
    assert.equal(worker.cpu_utilization, 55, 'metrics (never set by an event) come from the snapshot');
    assert.equal(worker.version, 7);
    assert.equal(store.isPartial('w1'), false);
  });

  it('takes a newer snapshot row over older event data', () => {
    const { store } = recordingStore();
    store.apply(statusEvent('w1', 3, 'pending'));
    store.load([view('w1', 4, { status: 'running' })]);
    assert.equal(store.get('w1').status, 'running');
    assert.equal(store.get('w1').version, 4);
  });

  it('drops workers absent from the snapshot unless an event touched them after beginSnapshot()', () => {
    const { store, changes } = recordingStore();
    store.load([view('old', 1), view('kept', 1)]);
    store.apply(statusEvent('gone', 2, 'running')); // touched before the snapshot was requested
    const since = store.beginSnapshot();
    store.apply(event('worker.created', 'fresh', 1, { worker: view('fresh', 1) }));
    changes.length = 0;

    store.load([view('kept', 2)], since);

    assert.equal(store.get('old'), undefined);
    assert.equal(store.get('gone'), undefined);
    assert.ok(store.get('fresh'), 'created while the snapshot was on its way: kept');
    assert.ok(store.get('kept'));
    const removed = changes.filter((c) => c.removed).map((c) => c.id).sort();
    assert.deepEqual(removed, ['gone', 'old']);
  });

  it('only events protect a worker from the snapshot: a plain merge after beginSnapshot() does not', () => {
    const { store } = recordingStore();
    const since = store.beginSnapshot();
    store.merge(view('fetched', 3)); // e.g. a single-worker REST fetch, not a stream event
    store.apply(statusEvent('evented', 3, 'running'));
    store.load([], since);
    assert.equal(store.get('fetched'), undefined);
    assert.ok(store.get('evented'));
  });

  it('load without `since` drops every worker the snapshot lacks', () => {
    const { store } = recordingStore();
    store.apply(statusEvent('w1', 2, 'running'));
    store.load([view('w2', 1)]);
    assert.equal(store.get('w1'), undefined);
    assert.deepEqual(store.list().map((w) => w.worker_id), ['w2']);
  });
});

describe('FleetStore: creation and partial records', () => {
  it('creates an unknown worker from worker.created', () => {
    const { store, changes } = recordingStore();
    const created = event('worker.created', 'w1', 1, { worker: view('w1', 1, { name: 'lab-box' }) });
    assert.equal(store.apply(created), true);
    const worker = store.get('w1');
    assert.equal(worker.name, 'lab-box');
    assert.equal(worker.owner, 'alice');
    assert.equal(worker.status, 'running');
    assert.equal(worker.version, 1);
    assert.equal(store.isPartial('w1'), false);
    assert.equal(changes.length, 1);
    assert.equal(changes[0].id, 'w1');
    assert.equal(store.apply(created), false, 'a replayed worker.created is a duplicate');
  });

  it('creates a partial record for an event about an unknown worker; a full view completes it', () => {
    const { store } = recordingStore();
    assert.equal(store.apply(statusEvent('w9', 5, 'stopping')), true);
    assert.equal(store.isPartial('w9'), true);
    assert.equal(store.get('w9').status, 'stopping');

    assert.equal(store.merge(view('w9', 4, { name: 'nine', owner: 'bob', status: 'running' })), true);
    assert.equal(store.isPartial('w9'), false);
    const worker = store.get('w9');
    assert.equal(worker.name, 'nine');
    assert.equal(worker.owner, 'bob');
    assert.equal(worker.status, 'stopping', 'the v5 event status beats the v4 view');
  });

  it('reports unknown ids as not partial and without history or labs', () => {
    const store = new FleetStore();
    assert.equal(store.isPartial('nope'), false);
    assert.equal(store.get('nope'), undefined);
    assert.deepEqual(store.history('nope', 'cpu_utilization'), []);
    assert.equal(store.labs('nope'), null);
  });
});

describe('FleetStore: termination', () => {
  it('sets status terminated and blocks a later stale status event', () => {
    const { store } = recordingStore();
    store.load([view('w1', 3, { status: 'stopping', transition_started_at: '2026-11-30T08:00:00Z' })]);
    assert.equal(store.apply(terminatedEvent('w1', 8, 'carol')), true);
    let worker = store.get('w1');
    assert.equal(worker.status, 'terminated');
    assert.equal(worker.transition_started_at, null);
    assert.equal(worker.terminated_by, 'carol');
    assert.equal(worker.terminated_at, '2026-11-30T09:00:00Z');

    assert.equal(store.apply(statusEvent('w1', 7, 'running')), false);
    worker = store.get('w1');
    assert.equal(worker.status, 'terminated');
  });
});

describe('FleetStore: metrics history', () => {
  it('grows one sample per applied metrics event and is capped at historySize', () => {
    const { store } = recordingStore({ historySize: 3 });
    for (let v = 1; v <= 5; v += 1) {
      assert.equal(store.apply(metricsEvent('w1', v, {
        cpu_utilization: v * 10, memory_utilization: v, storage_utilization: 100 - v,
      })), true);
      assert.equal(store.history('w1', 'cpu_utilization').length, Math.min(v, 3));
    }
    assert.deepEqual(store.history('w1', 'cpu_utilization'), [30, 40, 50], 'oldest dropped first');
    assert.deepEqual(store.history('w1', 'memory_utilization'), [3, 4, 5]);
    assert.deepEqual(store.history('w1', 'storage_utilization'), [97, 96, 95]);
  });

  it('does not sample on non-metrics events or on a missing metric value', () => {
    const { store } = recordingStore();
    store.apply(metricsEvent('w1', 1, { cpu_utilization: 5, memory_utilization: null }));
    store.apply(statusEvent('w1', 2, 'running'));
    assert.deepEqual(store.history('w1', 'cpu_utilization'), [5]);
    assert.deepEqual(store.history('w1', 'memory_utilization'), []);
  });

  it('exports the sampled metric names', () => {
    assert.deepEqual(METRICS, ['cpu_utilization', 'memory_utilization', 'storage_utilization']);
  });
});

describe('FleetStore: labs', () => {
  it('a labs event sets the labs list and labs_count', () => {
    const { store, changes } = recordingStore();
    const labs = [lab(1), lab(2)];
    assert.equal(store.apply(labsEvent('w1', 4, labs)), true);
    assert.deepEqual(store.labs('w1'), labs);
    assert.equal(store.get('w1').labs_count, 2);
    assert.deepEqual([...changes.at(-1).aspects].sort(), ['labs', 'labsCount']);
    assert.equal(store.apply(labsEvent('w1', 3, [lab(9)])), false, 'a stale labs event is ignored');
    assert.deepEqual(store.labs('w1'), labs);
  });

  it('a newer metrics labs_count that differs from the held list keeps the list', () => {
    // The count comes live from CML, the list as last synced: both are shown as they are,
    // and the list is not dropped (refetching it would only return the same sync).
    const { store } = recordingStore();
    const labs = [lab(1), lab(2)];
    store.apply(labsEvent('w1', 4, labs));
    store.apply(metricsEvent('w1', 5, { labs_count: 3 }));
    assert.equal(store.get('w1').labs_count, 3);
    assert.deepEqual(store.labs('w1'), labs);
  });

  it('a newer metrics labs_count equal to the held list length keeps the list', () => {
    const { store } = recordingStore();
    const labs = [lab(1), lab(2)];
    store.apply(labsEvent('w1', 4, labs));
    store.apply(metricsEvent('w1', 5, { labs_count: 2 }));
    assert.deepEqual(store.labs('w1'), labs);
  });

  it('an older metrics labs_count does not overwrite a newer labs event count', () => {
    const { store } = recordingStore();
    const labs = [lab(1), lab(2)];
    store.apply(labsEvent('w1', 6, labs));
    assert.equal(store.apply(metricsEvent('w1', 5, { labs_count: 7, cpu_utilization: 50 })), true);
    assert.equal(store.get('w1').labs_count, 2);
    assert.equal(store.get('w1').cpu_utilization, 50);
    assert.deepEqual(store.labs('w1'), labs);
  });

  it('a labs list delivered late lands without lowering a newer count', () => {
    const { store } = recordingStore();
    store.apply(metricsEvent('w1', 6, { labs_count: 3 }));
    const labs = [lab(1), lab(2)];
    assert.equal(store.apply(labsEvent('w1', 5, labs)), true); // delivered late
    assert.equal(store.get('w1').labs_count, 3, 'the v6 count stays');
    assert.deepEqual(store.labs('w1'), labs, 'the list had no newer version: it is the newest');
  });

  it('a fetched list is dropped when a labs event arrived while it was on its way', () => {
    const { store } = recordingStore();
    store.load([view('w1', 5, { labs_count: 1 })]);
    const since = store.beginLabs('w1');
    const fresh = [lab(1), lab(2)];
    store.apply(labsEvent('w1', 6, fresh)); // arrives during the request
    store.setLabs('w1', [lab(9)], since); // the answer, read before the sync
    assert.deepEqual(store.labs('w1'), fresh);
    store.setLabs('w1', [lab(3)], store.beginLabs('w1')); // a later fetch lands
    assert.deepEqual(store.labs('w1'), [lab(3)]);
  });

  it('remove forgets a worker and tells listeners', () => {
    const { store, changes } = recordingStore();
    store.load([view('w1', 5)]);
    changes.length = 0;
    store.remove('w1');
    store.remove('w1');
    assert.equal(store.get('w1'), undefined);
    assert.equal(changes.length, 1);
    assert.equal(changes[0].removed, true);
  });

  it('setLabs stores a fetched list and notifies listeners; unknown workers are ignored', () => {
    const { store, changes } = recordingStore();
    store.load([view('w1', 5, { labs_count: 1 })]);
    changes.length = 0;
    const labs = [lab(7)];
    store.setLabs('w1', labs);
    assert.deepEqual(store.labs('w1'), labs);
    assert.equal(changes.length, 1);
    assert.deepEqual([...changes[0].aspects], ['labs']);

    // The list counts as of v5: an older labs event does not replace it.
    assert.equal(store.apply(labsEvent('w1', 5, [lab(8), lab(9)])), false);
    assert.deepEqual(store.labs('w1'), labs);

    store.setLabs('unknown', labs);
    store.setLabs('w1', 'not a list');
    assert.equal(store.get('unknown'), undefined);
    assert.deepEqual(store.labs('w1'), labs);
    assert.equal(changes.length, 1);
  });
});

describe('FleetStore: listeners and listing', () => {
  it('isolates listener exceptions: other listeners still run and apply still succeeds', (t) => {
    const errors = t.mock.method(console, 'error', () => {});
    const store = new FleetStore();
    const seen = [];
    store.subscribe(() => { throw new Error('boom'); });
    store.subscribe((change) => seen.push(change.id));
    assert.equal(store.apply(statusEvent('w1', 1, 'running')), true);
    assert.deepEqual(seen, ['w1']);
    assert.equal(errors.mock.callCount(), 1);
    assert.equal(store.get('w1').status, 'running');
  });

  it('unsubscribe stops further calls', () => {
    const store = new FleetStore();
    let calls = 0;
    const unsubscribe = store.subscribe(() => { calls += 1; });
    store.apply(statusEvent('w1', 1, 'running'));
    unsubscribe();
    store.apply(statusEvent('w1', 2, 'stopped'));
    assert.equal(calls, 1);
  });

  it('list() is sorted by name, then worker id', () => {
    const store = new FleetStore();
    store.load([
      view('w3', 1, { name: 'charlie' }),
      view('w2', 1, { name: 'alpha' }),
      view('w1', 1, { name: 'bravo' }),
      view('w0', 1, { name: 'bravo' }),
    ]);
    assert.deepEqual(store.list().map((w) => w.worker_id), ['w2', 'w0', 'w1', 'w3']);
  });
});

describe('FleetStore.apply: malformed events', () => {
  const cases = [
    ['null', null],
    ['no worker_id', { type: 'worker.status.updated', version: 1, data: { new_status: 'running' } }],
    ['empty worker_id', { type: 'worker.status.updated', worker_id: '', version: 1, data: { new_status: 'running' } }],
    ['string version', { type: 'worker.status.updated', worker_id: 'w1', version: '2', data: { new_status: 'running' } }],
    ['fractional version', { type: 'worker.status.updated', worker_id: 'w1', version: 2.5, data: { new_status: 'running' } }],
    ['missing data', { type: 'worker.status.updated', worker_id: 'w1', version: 2 }],
    ['unknown type', { type: 'worker.exploded', worker_id: 'w1', version: 2, data: {} }],
    ['worker.created without worker', { type: 'worker.created', worker_id: 'w1', version: 2, data: {} }],
  ];
  for (const [name, bad] of cases) {
    it(`returns false and changes nothing for ${name}`, () => {
      const { store, changes } = recordingStore();
      assert.equal(store.apply(bad), false);
      assert.equal(changes.length, 0);
      assert.equal(store.workers.size, 0);
    });
  }

  it('merge rejects a view without worker_id or integer version', () => {
    const store = new FleetStore();
    assert.equal(store.merge(null), false);
    assert.equal(store.merge({ name: 'x', version: 1 }), false);
    assert.equal(store.merge({ worker_id: 'w1', version: '1' }), false);
    assert.equal(store.workers.size, 0);
  });
});
