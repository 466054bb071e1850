/** Toasts: short notices at the corner. Text only — server strings never become markup. */

import { h } from './dom.js';

export class Toasts {
  /** @param {HTMLElement} container @param {{max?: number, lifetimeMs?: number}} [options] */
  constructor(container, { max = 5, lifetimeMs = 6000 } = {}) {
    this.container = container;
    this.max = max;
    this.lifetimeMs = lifetimeMs;
  }

  /** @param {'info'|'success'|'warning'|'error'} kind */
  show(kind, title, message = '') {
    const toast = h(
      'div',
      { class: 'toast', 'data-kind': kind, role: kind === 'error' ? 'alert' : 'status' },
      h('strong', {}, title),
      message ? h('span', {}, message) : null,
      h('button', { type: 'button', class: 'close', 'aria-label': 'Dismiss', onclick: () => toast.remove() }, '×'),
    );
    this.container.append(toast);
    while (this.container.children.length > this.max) this.container.firstElementChild.remove();
    // Errors stay until dismissed; the rest fade out on their own.
    if (kind !== 'error') setTimeout(() => toast.remove(), this.lifetimeMs);
    return toast;
  }
}
