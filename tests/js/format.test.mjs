// Unit tests for the dashboard's pure formatting helpers.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  elapsedSince, formatAgo, formatDuration, formatNodes, formatPercent, formatTime, level,
  sparklinePoints,
} from '../../relay_service/dashboard/js/format.js';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const NOW = Date.parse('2026-11-30T12:00:00Z');
const ago = (ms) => new Date(NOW - ms).toISOString();

describe('formatDuration', () => {
  const cases = [
    [0, '0 s'],
    [999, '0 s'],
    [59 * SECOND, '59 s'],
    [59 * SECOND + 999, '59 s'],
    [60 * SECOND, '1 min 0 s'],
    [3 * MINUTE + 5 * SECOND, '3 min 5 s'],
    [3599 * SECOND, '59 min 59 s'],
    [3600 * SECOND, '1 h 0 min'],
    [2 * HOUR + 4 * MINUTE, '2 h 4 min'],
    [DAY - SECOND, '23 h 59 min'],
    [DAY, '1 d 0 h'],
    [3 * DAY + 2 * HOUR, '3 d 2 h'],
  ];
  for (const [ms, expected] of cases) {
    it(`${ms} ms → ${expected}`, () => assert.equal(formatDuration(ms), expected));
  }

  it('returns an empty string for negative or non-finite input', () => {
    assert.equal(formatDuration(-1), '');
    assert.equal(formatDuration(Number.NaN), '');
    assert.equal(formatDuration(Infinity), '');
  });
});

describe('formatAgo', () => {
  it("says 'just now' under 2 s, and for a time in the future", () => {
    assert.equal(formatAgo(ago(0), NOW), 'just now');
    assert.equal(formatAgo(ago(1999), NOW), 'just now');
    assert.equal(formatAgo(ago(-5 * MINUTE), NOW), 'just now');
  });

  it('counts seconds from 2 s', () => {
    assert.equal(formatAgo(ago(2 * SECOND), NOW), '2 s ago');
    assert.equal(formatAgo(ago(12 * SECOND), NOW), '12 s ago');
  });

  it('drops the smaller unit for minutes and hours', () => {
    assert.equal(formatAgo(ago(4 * MINUTE + 30 * SECOND), NOW), '4 min ago');
    assert.equal(formatAgo(ago(2 * HOUR + 4 * MINUTE), NOW), '2 h ago');
  });

  it("returns '—' for bad input", () => {
    assert.equal(formatAgo('not a time', NOW), '—');
    assert.equal(formatAgo(null, NOW), '—');
    assert.equal(formatAgo(undefined, NOW), '—');
    assert.equal(formatAgo('2026-11-30T08:55:34+00:00Z', NOW), '—');
  });
});

describe('elapsedSince', () => {
  it('formats the time since a transition started', () => {
    assert.equal(elapsedSince(ago(75 * SECOND), NOW), '1 min 15 s');
    assert.equal(elapsedSince(ago(42 * SECOND), NOW), '42 s');
  });

  it('clamps a future start to 0 s', () => {
    assert.equal(elapsedSince(ago(-10 * SECOND), NOW), '0 s');
  });

  it("returns '' for an unknown time", () => {
    assert.equal(elapsedSince(null, NOW), '');
    assert.equal(elapsedSince('garbage', NOW), '');
  });
});

describe('formatTime', () => {
  it('renders RFC 3339 times in UTC to the second', () => {
    assert.equal(formatTime('2026-11-30T08:55:34Z'), '2026-11-30 08:55:34 UTC');
    assert.equal(formatTime('2026-11-30T08:55:34.987Z'), '2026-11-30 08:55:34 UTC');
    assert.equal(formatTime('2026-11-30T10:55:34+02:00'), '2026-11-30 08:55:34 UTC');
  });

  it("returns '—' when there is no time", () => {
    assert.equal(formatTime(null), '—');
    assert.equal(formatTime(''), '—');
    assert.equal(formatTime('yesterday-ish'), '—');
  });
});

describe('formatPercent', () => {
  it('rounds to a whole percent', () => {
    assert.equal(formatPercent(37.4), '37 %');
    assert.equal(formatPercent(37.5), '38 %');
    assert.equal(formatPercent(0), '0 %');
    assert.equal(formatPercent(100), '100 %');
    assert.equal(formatPercent(99.6), '100 %');
  });

  it("returns '—' when unknown", () => {
    assert.equal(formatPercent(null), '—');
    assert.equal(formatPercent(undefined), '—');
    assert.equal(formatPercent(Number.NaN), '—');
    assert.equal(formatPercent('37'), '—');
  });
});

describe('level', () => {
  const cases = [
    [0, 'normal'],
    [69.9, 'normal'],
    [70, 'high'],
    [89.99, 'high'],
    [90, 'critical'],
    [100, 'critical'],
    [null, 'unknown'],
    [undefined, 'unknown'],
    ['95', 'unknown'],
  ];
  for (const [value, expected] of cases) {
    it(`${JSON.stringify(value)} → ${expected}`, () => assert.equal(level(value), expected));
  }
});

describe('formatNodes', () => {
  it('shows running / total', () => {
    assert.equal(formatNodes(3, 12), '3 / 12');
    assert.equal(formatNodes(0, 0), '0 / 0');
  });

  it("returns '—' when either count is missing", () => {
    assert.equal(formatNodes(null, 12), '—');
    assert.equal(formatNodes(3, undefined), '—');
    assert.equal(formatNodes('3', 12), '—');
  });
});

describe('sparklinePoints', () => {
  it("returns '' without values", () => {
    assert.equal(sparklinePoints([]), '');
    assert.equal(sparklinePoints([null, undefined, Number.NaN, 'x']), '');
  });

  it('draws one value as a flat line of two points across the box', () => {
    assert.equal(sparklinePoints([50]), '0,8 60,8');
  });

  it('inverts y: 100 is the top (y 0), 0 the bottom (y = height)', () => {
    assert.equal(sparklinePoints([0, 50, 100]), '0,16 30,8 60,0');
    assert.equal(sparklinePoints([100]), '0,0 60,0');
  });

  it('clamps values below 0 and above 100', () => {
    assert.equal(sparklinePoints([-20, 150]), '0,16 60,0');
  });

  it('skips non-numbers and honours width and height, rounding to one decimal', () => {
    assert.equal(sparklinePoints([null, 25, 'x', 75], 100, 20), '0,15 100,5');
    assert.equal(sparklinePoints([0, 0, 0, 33], 10, 10), '0,10 3.3,10 6.7,10 10,6.7');
  });
});
