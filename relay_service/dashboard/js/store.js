/**
 * The fleet as the page knows it: workers merged from REST snapshots and stream events.
 *
 * Every event carries the worker's version. A worker's fields fall into aspects (its
 * identity, status, metrics, labs); each aspect remembers the version that last set it and
 * takes an update only from a newer one. So a duplicate, a stale replay or two events
 * delivered out of order never overwrite newer data, and an older status event arriving
 * after a newer metrics event still lands (they touch different aspects).
 *
 * The labs list (as last synced from CML, by `worker.labs.updated` or REST) is kept apart
 * from the labs count (which metrics read live): each is shown as the newest of its kind.
 */

const ASPECT_FIELDS = {
  status: ['status', 'ec2_state', 'transition_started_at'],
  metrics: [
    'cpu_utilization', 'memory_utilization', 'storage_utilization',
    'running_nodes', 'total_nodes', 'metrics_collected_at',
  ],
  labsCount: ['labs_count'],
  ending: ['terminated_at', 'terminated_by'],
  identity: [
    'name', 'owner', 'instance_id', 'instance_type', 'ami_id', 'region', 'private_ip',
    'tags', 'created_at',
  ],
};
const ASPECTS = Object.keys(ASPECT_FIELDS);
export const METRICS = ['cpu_utilization', 'memory_utilization', 'storage_utilization'];

export class FleetStore {
  /** @param {{historySize?: number}} [options] samples kept per metric for sparklines */
  constructor({ historySize = 30 } = {}) {
    this.historySize = historySize;
    /** @type {Map<string, WorkerRecord>} */
    this.workers = new Map();
    this._listeners = new Set();
    this._sequence = 0;
  }

  /** `listener({id, worker, aspects, removed})` after each applied change. */
  subscribe(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  get(id) {
    return this.workers.get(id)?.view;
  }

  /** Worker views sorted by name (then id), for a first render. */
  list() {
    return [...this.workers.values()].map((r) => r.view).sort(byName);
  }

  history(id, metric) {
    return this.workers.get(id)?.history[metric] ?? [];
  }

  labs(id) {
    return this.workers.get(id)?.labs ?? null;
  }

  /** Call before requesting a snapshot; pass the result to `load`. */
  beginSnapshot() {
    return this._sequence;
  }

  /**
   * A REST snapshot. Workers it lacks are dropped unless an event touched them after
   * `since` (they were created while the snapshot was on its way).
   */
  load(views, since = this._sequence) {
    const present = new Set();
    for (const view of views) {
      present.add(view.worker_id);
      this.merge(view);
    }
    for (const [id, record] of this.workers) {
      if (!present.has(id) && record.touched <= since) {
        this.workers.delete(id);
        this._emit({ id, worker: record.view, aspects: new Set(), removed: true });
      }
    }
  }

  /** One full worker view (snapshot row, `worker.created`, or a fetch): merged per aspect. */
  merge(view, { viaEvent = false } = {}) {
    if (!view || typeof view.worker_id !== 'string' || !Number.isInteger(view.version)) {
      return false;
    }
    const record = this._record(view.worker_id);
    const changed = new Set();
    for (const aspect of ASPECTS) {
      if (view.version > record.versions[aspect]) {
        record.versions[aspect] = view.version;
        for (const field of ASPECT_FIELDS[aspect]) {
          if (field in view) record.view[field] = view[field];
        }
        changed.add(aspect);
      }
    }
    record.partial = false;
    if (changed.has('metrics')) this._sample(record, view);
    return this._settle(record, view.version, view.updated_at, changed, viaEvent);
  }

  /**
   * One stream event (the wire object). Returns true when it changed something, false
   * for a duplicate, a stale event or one that is not about a worker.
   */
  apply(event) {
    const { worker_id: id, version, data } = event ?? {};
    if (typeof id !== 'string' || !id || !Number.isInteger(version) || version < 1 || !data) {
      return false;
    }
    switch (event.type) {
      case 'worker.created':
        return this.merge(data.worker, { viaEvent: true });
      case 'worker.status.updated':
        return this._update(id, version, event.time, {
          status: { status: data.new_status, ec2_state: data.ec2_state,
            transition_started_at: data.transition_started_at },
        });
      case 'worker.metrics.updated': {
        const metrics = {};
        for (const field of ASPECT_FIELDS.metrics) {
          if (field in data) metrics[field] = data[field];
        }
        if ('collected_at' in data) metrics.metrics_collected_at = data.collected_at;
        const parts = { metrics };
        if (data.labs_count !== undefined && data.labs_count !== null) {
          parts.labsCount = { labs_count: data.labs_count };
        }
        return this._update(id, version, event.time, parts);
      }
      case 'worker.labs.updated': {
        const record = this._record(id);
        const changed = new Set();
        const labs = Array.isArray(data.labs) ? data.labs : [];
        if (version > record.labsVersion) {
          record.labsVersion = version;
          record.labs = labs;
          changed.add('labs');
        }
        if (version > record.versions.labsCount) {
          record.versions.labsCount = version;
          record.view.labs_count = labs.length;
          changed.add('labsCount');
        }
        return this._settle(record, version, event.time, changed, true);
      }
      case 'worker.terminated':
        return this._update(id, version, event.time, {
          status: { status: 'terminated', transition_started_at: null },
          ending: { terminated_at: data.terminated_at, terminated_by: data.terminated_by },
        });
      default:
        return false;
    }
  }

  /** Call before fetching a worker's labs; pass the result to `setLabs`. */
  beginLabs(id) {
    return this.workers.get(id)?.labsVersion ?? 0;
  }

  /**
   * The labs list as fetched by REST (as last synced from CML). Dropped if a labs event
   * arrived while the request was on its way (`since` from `beginLabs`): that one is newer.
   */
  setLabs(id, labs, since = Infinity) {
    const record = this.workers.get(id);
    if (!record || !Array.isArray(labs) || record.labsVersion > since) return;
    record.labs = labs;
    record.labsVersion = Math.max(record.labsVersion, record.view.version ?? 0);
    this._emit({ id, worker: record.view, aspects: new Set(['labs']) });
  }

  /** Forget a worker (one known only from events that the API says is gone). */
  remove(id) {
    const record = this.workers.get(id);
    if (!record) return;
    this.workers.delete(id);
    this._emit({ id, worker: record.view, aspects: new Set(), removed: true });
  }

  /** Whether a worker is known only from events (its name and owner are missing). */
  isPartial(id) {
    return this.workers.get(id)?.partial ?? false;
  }

  _update(id, version, time, parts) {
    const record = this._record(id);
    const changed = new Set();
    for (const [aspect, fields] of Object.entries(parts)) {
      if (version > record.versions[aspect]) {
        record.versions[aspect] = version;
        Object.assign(record.view, fields);
        changed.add(aspect);
      }
    }
    if (changed.has('metrics')) this._sample(record, parts.metrics);
    return this._settle(record, version, time, changed, true);
  }

  _settle(record, version, time, changed, viaEvent) {
    if (changed.size === 0) return false;
    record.view.version = Math.max(record.view.version ?? 0, version);
    if (time && (!record.view.updated_at || time > record.view.updated_at)) {
      record.view.updated_at = time;
    }
    if (viaEvent) record.touched = ++this._sequence;
    this._emit({ id: record.view.worker_id, worker: record.view, aspects: changed });
    return true;
  }

  _record(id) {
    let record = this.workers.get(id);
    if (!record) {
      record = {
        view: { worker_id: id, name: id, owner: '', status: 'unknown', version: 0 },
        versions: Object.fromEntries(ASPECTS.map((a) => [a, 0])),
        history: Object.fromEntries(METRICS.map((m) => [m, []])),
        labs: null,
        labsVersion: 0,
        partial: true,
        touched: 0,
      };
      this.workers.set(id, record);
    }
    return record;
  }

  _sample(record, values) {
    for (const metric of METRICS) {
      const value = values[metric];
      if (typeof value !== 'number') continue;
      const series = record.history[metric];
      series.push(value);
      if (series.length > this.historySize) series.splice(0, series.length - this.historySize);
    }
  }

  _emit(change) {
    for (const listener of this._listeners) {
      try {
        listener(change);
      } catch (error) {
        console.error('fleet store listener failed', error);
      }
    }
  }
}

/** Transitional statuses show how long they have been running. */
export const TRANSITIONAL = new Set(['provisioning', 'pending', 'stopping', 'terminating']);

export function byName(a, b) {
  return (a.name ?? '').localeCompare(b.name ?? '') || a.worker_id.localeCompare(b.worker_id);
}

/**
 * @typedef {object} WorkerRecord
 * @property {object} view the worker as shown (the API's WorkerView fields)
 * @property {Record<string, number>} versions per aspect, the version that last set it
 * @property {Record<string, number[]>} history recent samples per metric
 * @property {object[]|null} labs the labs list, when known
 * @property {number} labsVersion the version that set the labs list
 * @property {boolean} partial known from events only
 * @property {number} touched the store sequence of the last event that changed it
 */
