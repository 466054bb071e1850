/**
 * The fleet table and the details panel. Rows are built once per worker and then
 * updated cell by cell as the store reports changes: no table re-render, so scrolling,
 * selection and focus survive a stream of events.
 */

import { h, setAttr, setText, svg } from './dom.js';
import {
  elapsedSince, formatAgo, formatNodes, formatPercent, formatTime, level, sparklinePoints,
} from './format.js';
import { METRICS, TRANSITIONAL, byName } from './store.js';

/** What each role may do; the server enforces the same rules. */
export const PERMISSIONS = {
  admin: new Set(['create', 'start', 'stop', 'terminate', 'refresh']),
  manager: new Set(['start', 'stop', 'refresh']),
  user: new Set(),
};

/** Which commands make sense in which status. */
const COMMANDS = [
  { name: 'start', label: 'Start', when: (s) => s === 'stopped' },
  { name: 'stop', label: 'Stop', when: (s) => s === 'running' },
  {
    name: 'terminate',
    label: 'Terminate',
    when: (s) => !['terminating', 'terminated'].includes(s),
    danger: true,
  },
];

const METRIC_LABELS = {
  cpu_utilization: 'CPU',
  memory_utilization: 'Memory',
  storage_utilization: 'Disk',
};

export class FleetView {
  /**
   * @param {object} options
   * @param {import('./store.js').FleetStore} options.store
   * @param {HTMLTableSectionElement} options.tbody
   * @param {HTMLElement} options.details the details panel
   * @param {string|null} options.role
   * @param {(command: string, id: string) => Promise<void>} options.onCommand
   * @param {(id: string) => void} options.onSelect a worker was opened (load its labs)
   */
  constructor({ store, tbody, details, role, onCommand, onSelect }) {
    this.store = store;
    this.tbody = tbody;
    this.details = details;
    this.allowed = PERMISSIONS[role] ?? new Set();
    this.onCommand = onCommand;
    this.onSelect = onSelect;
    this.rows = new Map();
    this.selected = null;
    this.panel = null;
    this._unsubscribe = store.subscribe((change) => this._changed(change));
    for (const worker of store.list()) this._upsert(worker);
  }

  get hasActions() {
    return ['start', 'stop', 'terminate'].some((c) => this.allowed.has(c));
  }

  destroy() {
    this._unsubscribe();
  }

  /** Called every second: running timers and "updated … ago". */
  tick(now = Date.now()) {
    for (const row of this.rows.values()) this._updateTimes(row, now);
    if (this.panel) this._updatePanelTimes(now);
  }

  select(id) {
    if (this.selected === id) return;
    const previous = this.rows.get(this.selected);
    if (previous) setAttr(previous.tr, 'aria-selected', 'false');
    this.selected = id;
    const row = this.rows.get(id);
    if (!row) {
      this._closePanel();
      return;
    }
    setAttr(row.tr, 'aria-selected', 'true');
    this._openPanel(id); // fetches the labs when it does not hold them
  }

  _changed({ id, worker, removed, aspects }) {
    if (removed) {
      this.rows.get(id)?.tr.remove();
      this.rows.delete(id);
      if (this.selected === id) this.select(null);
      return;
    }
    this._upsert(worker, aspects);
    if (this.selected === id) this._updatePanel(worker, aspects);
  }

  _upsert(worker, aspects) {
    let row = this.rows.get(worker.worker_id);
    if (!row) {
      row = this._buildRow(worker);
      this.rows.set(worker.worker_id, row);
      this._place(row, worker);
    } else if (aspects?.has('identity') && row.name !== worker.name) {
      this._place(row, worker);
    }
    this._updateRow(row, worker);
  }

  /** Insert (or move) a row where the name order puts it. */
  _place(row, worker) {
    row.name = worker.name;
    let before = null;
    for (const other of this.tbody.children) {
      if (other === row.tr) continue;
      const otherWorker = this.store.get(other.dataset.workerId);
      if (otherWorker && byName(worker, otherWorker) < 0) {
        before = other;
        break;
      }
    }
    this.tbody.insertBefore(row.tr, before);
  }

  _buildRow(worker) {
    const id = worker.worker_id;
    const cells = {
      name: h('td', { 'data-col': 'name', class: 'name' }),
      status: h('span', { class: 'status' }),
      elapsed: h('span', { class: 'elapsed' }),
      type: h('td', { 'data-col': 'instance_type' }),
      nodes: h('td', { 'data-col': 'nodes', class: 'num' }),
      labs: h('td', { 'data-col': 'labs', class: 'num' }),
      updated: h('td', { 'data-col': 'updated', class: 'muted' }),
      actions: h('td', { 'data-col': 'actions', class: 'actions' }),
      metrics: {},
    };
    const metricCells = METRICS.map((metric) => {
      const gauge = meter(metric);
      cells.metrics[metric] = gauge;
      return h('td', { 'data-col': metric }, gauge.root);
    });
    const tr = h(
      'tr',
      { dataset: { workerId: id }, tabindex: 0, 'aria-selected': 'false' },
      cells.name,
      h('td', { 'data-col': 'status' }, cells.status, cells.elapsed),
      cells.type,
      ...metricCells,
      cells.nodes,
      cells.labs,
      cells.updated,
      this.hasActions ? cells.actions : null,
    );
    tr.addEventListener('click', (event) => {
      if (!event.target.closest('button')) this.select(id);
    });
    tr.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && event.target === tr) this.select(id);
    });
    return { tr, cells, worker: id, name: worker.name, commandsKey: null };
  }

  _updateRow(row, worker) {
    const { cells } = row;
    setText(cells.name, worker.name);
    setAttr(cells.name, 'title', worker.worker_id);
    setText(cells.status, worker.status);
    setAttr(cells.status, 'data-status', worker.status);
    setAttr(row.tr, 'data-status', worker.status);
    setAttr(row.tr, 'data-version', worker.version);
    setText(cells.type, worker.instance_type ?? '—');
    for (const metric of METRICS) {
      cells.metrics[metric].update(worker[metric], this.store.history(worker.worker_id, metric));
    }
    setText(cells.nodes, formatNodes(worker.running_nodes, worker.total_nodes));
    setText(cells.labs, typeof worker.labs_count === 'number' ? worker.labs_count : '—');
    if (this.hasActions) this._updateCommands(cells.actions, row, worker);
    this._updateTimes(row, Date.now());
  }

  _updateTimes(row, now) {
    const worker = this.store.get(row.worker);
    if (!worker) return;
    const running = TRANSITIONAL.has(worker.status) ? elapsedSince(worker.transition_started_at, now) : '';
    setText(row.cells.elapsed, running ? `for ${running}` : '');
    setText(row.cells.updated, formatAgo(worker.updated_at, now));
    setAttr(row.cells.updated, 'title', worker.updated_at ?? '');
  }

  /** Command buttons for this role and status; rebuilt only when the set changes. */
  _updateCommands(container, holder, worker) {
    const commands = COMMANDS.filter((c) => this.allowed.has(c.name) && c.when(worker.status));
    const key = commands.map((c) => c.name).join(',');
    if (holder.commandsKey === key) return;
    holder.commandsKey = key;
    container.replaceChildren(
      ...commands.map((command) =>
        h(
          'button',
          {
            type: 'button',
            class: command.danger ? 'danger small' : 'small',
            'data-command': command.name,
            onclick: (event) => this._run(event.currentTarget, command.name, worker.worker_id),
          },
          command.label,
        ),
      ),
    );
  }

  async _run(button, command, id) {
    if (command === 'terminate') {
      const name = this.store.get(id)?.name ?? id;
      // confirm() shows the name as plain text.
      if (!globalThis.confirm(`Terminate ${name}? Its EC2 instance and its labs are deleted.`)) return;
    }
    button.disabled = true;
    try {
      await this.onCommand(command, id);
    } finally {
      button.disabled = false;
    }
  }

  // The details panel ---------------------------------------------------------------

  _openPanel(id) {
    const worker = this.store.get(id);
    const fields = {};
    const field = (key, label) => {
      fields[key] = h('dd', { 'data-field': key });
      return [h('dt', {}, label), fields[key]];
    };
    const title = h('h2', { id: 'details-title' });
    const commands = h('div', { class: 'commands' });
    const refresh = this.allowed.has('refresh')
      ? h('button', {
        type: 'button',
        class: 'small',
        'data-command': 'refresh',
        onclick: (event) => this._run(event.currentTarget, 'refresh', id),
      }, 'Refresh labs')
      : null;
    const labs = h('div', { class: 'labs', 'data-field': 'labs' });
    this.details.replaceChildren(
      h('header', {},
        title,
        h('button', {
          type: 'button', class: 'close', 'aria-label': 'Close details', onclick: () => this.select(null),
        }, '×')),
      h('dl', {},
        field('worker_id', 'Worker'),
        field('owner', 'Owner'),
        field('status', 'Status'),
        field('ec2_state', 'EC2 state'),
        field('instance_id', 'Instance'),
        field('instance_type', 'Type'),
        field('private_ip', 'Private IP'),
        field('region', 'Region'),
        field('created_at', 'Created'),
        field('updated_at', 'Updated'),
        field('nodes', 'Nodes'),
        field('labs_count', 'Labs'),
        field('metrics_collected_at', 'Metrics from')),
      commands,
      h('section', {}, h('h3', {}, 'Labs ', refresh), labs),
    );
    this.details.hidden = false;
    this.panel = { id, title, fields, commands, labs, commandsKey: null, labsKey: undefined };
    this._updatePanel(worker, null);
  }

  _closePanel() {
    this.panel = null;
    this.details.hidden = true;
    this.details.replaceChildren();
  }

  _updatePanel(worker, aspects) {
    const panel = this.panel;
    if (!panel || !worker) return;
    const { fields } = panel;
    setText(panel.title, worker.name);
    for (const key of ['worker_id', 'owner', 'status', 'ec2_state', 'instance_id',
      'instance_type', 'private_ip', 'region']) {
      setText(fields[key], worker[key] ?? '—');
    }
    setText(fields.created_at, formatTime(worker.created_at));
    setText(fields.metrics_collected_at, formatTime(worker.metrics_collected_at));
    setText(fields.nodes, formatNodes(worker.running_nodes, worker.total_nodes));
    setText(fields.labs_count, worker.labs_count ?? '—');
    if (this.hasActions) this._updateCommands(panel.commands, panel, worker);
    this._updatePanelTimes(Date.now());
    if (!aspects || aspects.has('labs') || aspects.has('labsCount')) this._updateLabs();
  }

  _updatePanelTimes(now) {
    const worker = this.store.get(this.panel.id);
    if (!worker) return;
    const running = TRANSITIONAL.has(worker.status) ? elapsedSince(worker.transition_started_at, now) : '';
    setText(this.panel.fields.status, running ? `${worker.status} for ${running}` : worker.status);
    setText(this.panel.fields.updated_at, `${formatTime(worker.updated_at)} (${formatAgo(worker.updated_at, now)})`);
  }

  _updateLabs() {
    const panel = this.panel;
    const labs = this.store.labs(panel.id);
    const key = labs === null ? null : JSON.stringify(labs);
    if (key === panel.labsKey) return;
    panel.labsKey = key;
    if (labs === null) {
      panel.labs.replaceChildren(h('p', { class: 'muted' }, 'Loading labs…'));
      this.onSelect?.(panel.id); // the list we held is gone or old: fetch it
      return;
    }
    if (labs.length === 0) {
      panel.labs.replaceChildren(h('p', { class: 'muted' }, 'No labs on this worker.'));
      return;
    }
    panel.labs.replaceChildren(
      h('table', { class: 'labs-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Title'), h('th', {}, 'State'),
          h('th', { class: 'num' }, 'Nodes'), h('th', {}, 'Owner'))),
        h('tbody', {}, ...labs.map((lab) => h('tr', { dataset: { labId: lab.lab_id } },
          h('td', {}, lab.title), h('td', {}, lab.state),
          h('td', { class: 'num' }, lab.node_count), h('td', {}, lab.owner ?? '—'))))),
    );
  }
}

/** A percentage bar with a sparkline of recent values. */
function meter(metric) {
  const fill = h('span', { class: 'bar-fill' });
  const text = h('span', { class: 'bar-text' });
  const line = svg('polyline', { fill: 'none', 'stroke-width': 1.5 });
  const spark = svg('svg', {
    class: 'spark', width: 48, height: 16, viewBox: '0 0 48 16', 'aria-hidden': 'true',
  }, line);
  const bar = h('span', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100 }, fill);
  const root = h('span', { class: 'meter', title: METRIC_LABELS[metric] }, bar, text, spark);
  return {
    root,
    update(value, history) {
      const known = typeof value === 'number' && Number.isFinite(value);
      const width = known ? `${Math.max(0, Math.min(100, value)).toFixed(1)}%` : '0%';
      if (fill.style.width !== width) fill.style.width = width;
      setAttr(bar, 'data-level', level(value));
      setAttr(bar, 'data-value', known ? value : null);
      setAttr(bar, 'aria-valuenow', known ? Math.round(value) : null);
      setAttr(bar, 'aria-label', `${METRIC_LABELS[metric]} ${formatPercent(value)}`);
      setText(text, formatPercent(value));
      setAttr(line, 'points', sparklinePoints(history, 48, 16));
    },
  };
}
