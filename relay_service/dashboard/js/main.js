/**
 * The dashboard: sign in, load the fleet, keep it live.
 *
 * Order matters for not losing events: the stream is opened first, and the REST snapshot
 * is loaded once it is connected; events that arrive meanwhile are merged by version, so
 * the overlap is harmless. After a reconnect the relay replays what was missed; only when
 * it cannot (`resync`, or no cursor yet) is the snapshot loaded again.
 */

import { Api, ApiError } from './api.js';
import { Session } from './auth.js';
import { h } from './dom.js';
import { FleetView, PERMISSIONS } from './fleet-view.js';
import { RealtimeClient } from './sse-client.js';
import { FleetStore } from './store.js';
import { Toasts } from './toasts.js';

const REALTIME_KEY = 'cmlfleet.realtime';
const $ = (selector) => document.querySelector(selector);

/** Real-time updates on unless `?realtime=off` or the stored preference says off. */
export function realtimeWanted(search = location.search, storage = localStorage) {
  const param = new URLSearchParams(search).get('realtime');
  if (param !== null) return !['off', '0', 'false', 'no'].includes(param.toLowerCase());
  return storage.getItem(REALTIME_KEY) !== 'off';
}

class Dashboard {
  constructor(config, session) {
    this.session = session;
    this.api = new Api(() => session.freshToken());
    this.store = new FleetStore();
    this.toasts = new Toasts($('#toasts'));
    this.client = null;
    this.loading = null;
    this.snapshots = 0; // snapshots loaded: after a replayed reconnect there is none
    this.snapshotFailures = 0;
    this.snapshotRetry = null;
    this.fetching = new Set();
    this.view = new FleetView({
      store: this.store,
      tbody: $('#workers tbody'),
      details: $('#details'),
      role: session.role,
      onCommand: (command, id) => this.command(command, id),
      onSelect: (id) => this.loadLabs(id),
    });
    this.store.subscribe(({ id, removed }) => {
      if (!removed && this.store.isPartial(id)) this.fetchWorker(id);
      this.showEmpty();
    });
  }

  start() {
    const role = this.session.role;
    $('#who').textContent = `${this.session.username} (${role ?? 'no role'})`;
    $('#fleet').hidden = false;
    $('#workers').dataset.role = role ?? '';
    $('#actions-head').hidden = !this.view.hasActions;
    $('#create-worker').hidden = !PERMISSIONS[role]?.has('create');
    $('#create-worker').addEventListener('click', () => this.openCreate());
    $('#create-form').addEventListener('submit', (event) => this.submitCreate(event));
    $('#create-cancel').addEventListener('click', () => $('#create-dialog').close());
    $('#refresh').addEventListener('click', () => this.loadSnapshot());
    const toggle = $('#realtime-toggle');
    toggle.checked = realtimeWanted();
    toggle.addEventListener('change', () => {
      localStorage.setItem(REALTIME_KEY, toggle.checked ? 'on' : 'off');
      this.setRealtime(toggle.checked);
    });
    setInterval(() => this.view.tick(), 1000);
    this.setRealtime(toggle.checked);
    // At once, even with the stream on: the page shows the fleet while the relay is away.
    // The stream's `connected` loads it again, so nothing between the two is missed.
    if (toggle.checked) this.loadSnapshot();
  }

  setRealtime(on) {
    if (on && !this.client) {
      this.connect();
    } else if (!on && this.client) {
      this.client.stop();
      this.client = null;
    }
    if (!on) {
      this.badge('off');
      this.loadSnapshot();
    }
  }

  connect() {
    const client = new RealtimeClient({ getStreamUrl: () => this.api.streamUrl() });
    this.client = client; // before start(): its first status change must reach the badge
    client.onStatus((status, detail) => this.onStatus(client, status, detail));
    client.on('connected', (data) => {
      // A replay covered the gap; anything else (first connect, no cursor yet, resync)
      // needs the snapshot.
      if (data?.replay?.status !== 'replayed') this.loadSnapshot();
    });
    client.on('resync', () => this.loadSnapshot());
    client.on('system.sse.shutdown', () => {
      this.toasts.show('info', 'Server restarting', 'reconnecting…');
    });
    client.on('*', (event) => this.onEvent(event));
    client.start();
    return client;
  }

  onStatus(client, status, detail) {
    if (this.client !== client) return; // a client switched off since
    this.badge(status);
    if (status === 'error' && detail?.reason === 'unauthorized') {
      // The session is over (the ticket was refused): sign in again, as for the API.
      this.failed('Signed out', new ApiError(401, 'unauthorized', 'your session has ended'));
    }
  }

  badge(status) {
    const badge = $('#realtime-badge');
    badge.dataset.status = status;
    badge.textContent = `Realtime: ${status}`;
  }

  onEvent(event) {
    const before = this.store.get(event.worker_id);
    const name = before?.name ?? event.data?.worker?.name ?? event.worker_id;
    if (!this.store.apply(event)) return; // a duplicate or a stale event: nothing new
    const data = event.data ?? {};
    if (event.type === 'worker.created') {
      this.toasts.show('info', 'Worker created', `${data.worker?.name ?? name} (owner ${data.worker?.owner ?? '?'})`);
    } else if (event.type === 'worker.terminated') {
      this.toasts.show('warning', 'Worker terminated', `${name} by ${data.terminated_by ?? '?'}`);
    } else if (event.type === 'worker.status.updated' && data.new_status !== data.old_status) {
      const kind = data.new_status === 'failed' ? 'error' : 'info';
      this.toasts.show(kind, name, `${data.old_status} → ${data.new_status}${data.reason ? ` (${data.reason})` : ''}`);
    }
  }

  async loadSnapshot() {
    if (this.loading) {
      this.loading.again = true;
      return;
    }
    clearTimeout(this.snapshotRetry);
    this.loading = { again: false };
    try {
      do {
        this.loading.again = false;
        const since = this.store.beginSnapshot();
        const workers = await this.api.listWorkers();
        this.store.load(workers, since);
        this.snapshots += 1;
      } while (this.loading.again);
      this.snapshotFailures = 0;
      this.showEmpty();
    } catch (error) {
      // Without it the page may miss changes (a resync, a first connect): try again.
      this.snapshotFailures += 1;
      const delay = Math.min(30_000, 1000 * 2 ** this.snapshotFailures);
      this.snapshotRetry = setTimeout(() => this.loadSnapshot(), delay);
      if (this.snapshotFailures === 1) this.failed('Could not load the fleet', error);
    } finally {
      this.loading = null;
    }
  }

  async fetchWorker(id) {
    if (this.fetching.has(id)) return;
    this.fetching.add(id);
    try {
      this.store.merge(await this.api.getWorker(id));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) this.store.remove(id); // gone
      else this.failed('Could not load a worker', error);
    } finally {
      this.fetching.delete(id);
    }
  }

  async loadLabs(id) {
    try {
      const since = this.store.beginLabs(id);
      const result = await this.api.labs(id);
      this.store.setLabs(id, result.labs, since);
    } catch (error) {
      this.failed('Could not load the labs', error);
    }
  }

  async command(command, id) {
    const name = this.store.get(id)?.name ?? id;
    try {
      if (command === 'start') await this.api.startWorker(id);
      else if (command === 'stop') await this.api.stopWorker(id);
      else if (command === 'terminate') await this.api.terminateWorker(id);
      else if (command === 'refresh') {
        const result = await this.api.refreshLabs(id);
        this.store.setLabs(id, result.labs);
        this.toasts.show('success', 'Labs refreshed', `${name}: ${result.labs.length} labs`);
        return;
      }
      if (!this.client) this.loadSnapshot(); // without the stream, see the result by REST
    } catch (error) {
      this.failed(`Could not ${command} ${name}`, error);
    }
  }

  openCreate() {
    $('#create-error').textContent = '';
    $('#create-form').reset();
    $('#create-dialog').showModal();
  }

  async submitCreate(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const fields = { name: String(form.get('name') ?? '').trim() };
    for (const key of ['owner', 'instance_type']) {
      const value = String(form.get(key) ?? '').trim();
      if (value) fields[key] = value;
    }
    const submit = event.target.querySelector('button[type=submit]');
    submit.disabled = true;
    try {
      const worker = await this.api.createWorker(fields);
      this.store.merge(worker, { viaEvent: true }); // kept even if a snapshot is loading
      $('#create-dialog').close();
      if (!this.client) this.toasts.show('info', 'Worker created', worker.name);
    } catch (error) {
      $('#create-error').textContent = error.message;
    } finally {
      submit.disabled = false;
    }
  }

  failed(title, error) {
    if (error instanceof ApiError && error.status === 401) {
      if (!this.session.signOut()) location.reload();
      return;
    }
    this.toasts.show('error', title, error?.message ?? String(error));
  }

  showEmpty() {
    $('#empty').hidden = this.store.workers.size > 0;
  }
}

function showSignIn(session) {
  const panel = $('#sign-in');
  panel.hidden = false;
  const mode = session.signIn.mode;
  const status = $('#sign-in-error');
  if (mode === 'development') {
    const users = session.signIn.users ?? [];
    $('#dev-sign-in').hidden = false;
    $('#dev-users').replaceChildren(
      ...users.map((user) =>
        h('button', {
          type: 'button',
          'data-username': user.username,
          onclick: () => devSignIn(session, user.username, user.role, status),
        }, `${user.username} (${user.role})`)),
    );
    $('#dev-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const form = new FormData(event.target);
      devSignIn(session, String(form.get('username')).trim(), String(form.get('role')), status);
    });
  } else if (mode === 'oidc') {
    $('#oidc-sign-in').hidden = false;
    $('#oidc-button').addEventListener('click', () => session.beginOidc());
  } else {
    status.textContent = 'This deployment has no sign-in configured (OIDC_AUTHORIZE_URL).';
  }
}

async function devSignIn(session, username, role, status) {
  try {
    await session.signInDevelopment(username, role);
    location.reload();
  } catch (error) {
    status.textContent = error.message;
  }
}

async function main() {
  let config;
  try {
    const response = await fetch('/config.json', { cache: 'no-store' });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    config = await response.json();
  } catch (error) {
    $('#fatal').textContent = `The dashboard cannot load its configuration: ${error.message}`;
    $('#fatal').hidden = false;
    return;
  }
  const session = new Session(config);
  try {
    await session.restore();
  } catch (error) {
    $('#sign-in-error').textContent = error.message;
  }
  $('#sign-out').addEventListener('click', () => {
    if (!session.signOut()) location.reload(); // else the issuer's logout page comes back here
  });
  if (!session.valid) {
    showSignIn(session);
    return;
  }
  $('#sign-out').hidden = false;
  const dashboard = new Dashboard(config, session);
  globalThis.cmlfleet = dashboard; // for people poking around in the console
  dashboard.start();
}

main();
