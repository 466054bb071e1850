/** Formatting helpers: pure functions, tested under node. */

/** "42 s", "3 min 5 s", "2 h 4 min", "3 d 2 h" for a duration in milliseconds. */
export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** "just now", "12 s ago", "4 min ago" … for an RFC 3339 time, relative to `now`. */
export function formatAgo(time, now = Date.now()) {
  const at = Date.parse(time ?? '');
  if (Number.isNaN(at)) return '—';
  const ms = Math.max(0, now - at);
  if (ms < 2000) return 'just now';
  return `${formatDuration(ms).replace(/ \d+ (s|min)$/, '')} ago`;
}

/** Since when a transition has been running, or '' if the time is unknown. */
export function elapsedSince(time, now = Date.now()) {
  const at = Date.parse(time ?? '');
  return Number.isNaN(at) ? '' : formatDuration(Math.max(0, now - at));
}

/** "2026-11-30 08:55:34 UTC" for an RFC 3339 time; '—' when there is none. */
export function formatTime(time) {
  const at = Date.parse(time ?? '');
  if (Number.isNaN(at)) return '—';
  return `${new Date(at).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

/** A percentage as shown in a bar: "37 %"; '—' when unknown. */
export function formatPercent(value) {
  return typeof value === 'number' && Number.isFinite(value) ? `${Math.round(value)} %` : '—';
}

/** Bar level: normal, high from 70 %, critical from 90 % (as operators are used to). */
export function level(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return 'unknown';
  if (value >= 90) return 'critical';
  if (value >= 70) return 'high';
  return 'normal';
}

/** "3 / 12" nodes; '—' when the worker has not reported. */
export function formatNodes(running, total) {
  if (typeof running !== 'number' || typeof total !== 'number') return '—';
  return `${running} / ${total}`;
}

/**
 * An SVG polyline `points` string for a sparkline of percentages (0 to 100) drawn in a
 * `width` × `height` box, oldest value on the left.
 */
export function sparklinePoints(values, width = 60, height = 16) {
  const numbers = values.filter((v) => typeof v === 'number' && Number.isFinite(v));
  if (numbers.length === 0) return '';
  if (numbers.length === 1) numbers.push(numbers[0]);
  const step = width / (numbers.length - 1);
  return numbers
    .map((v, i) => {
      const y = height - (Math.min(100, Math.max(0, v)) / 100) * height;
      return `${round(i * step)},${round(y)}`;
    })
    .join(' ');
}

function round(n) {
  return Math.round(n * 10) / 10;
}
