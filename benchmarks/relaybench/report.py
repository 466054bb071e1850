"""The results table (markdown) and the verdict against the issue's targets."""

from __future__ import annotations

from typing import Any

from relay.runtime import GC_THRESHOLDS

# From the issue: what the relay should reach, and Pushpin's figure there, when not measured.
PUSHPIN_BURST_REFERENCE = 110_000  # deliveries/s, low end of the ~110-150k measured on this VM
TARGET_IDLE_CONNECTIONS = 10_000
TARGET_P99_MS = 100.0
TARGET_KIB_PER_CONN = 32.0


def _num(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}"


def _get(data: dict[str, Any] | None, *path: Any) -> Any:
    node: Any = data
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _delivered(scenario: dict[str, Any] | None) -> str:
    if not scenario:
        return "-"
    text = f"{scenario['delivered']:,} / {scenario['expected']:,}"
    if scenario["delivered"] < scenario["expected"]:
        text += f" ({scenario['outcome']})"
    return text


def _latency(scenario: dict[str, Any] | None) -> str:
    if not scenario:
        return "-"
    lat = scenario["latency"]
    return f"{_num(lat['p50_ms'], 1)} / {_num(lat['p99_ms'], 1)} / {_num(lat['max_ms'], 0)}"


def _cpu(scenario: dict[str, Any] | None) -> str:
    if not scenario:
        return "-"
    return (
        f"{_num(scenario['server_cpu_s'], 2)} s, {_num(scenario.get('server_system_s'), 2)} s"
        f" of it kernel ({_num(scenario['server_cpu_us_per_delivery'], 1)} µs/delivery)"
    )


def _busy(scenario: dict[str, Any] | None) -> str:
    if not scenario:
        return "-"
    return (
        f"{_num(scenario['machine_busy_pct'], 0)} % (clients {_num(scenario['client_cpu_s'], 2)}"
        f" s, other {_num(scenario.get('other_cpu_s'), 2)} s)"
    )


def _level(idle: dict[str, Any] | None, target: int) -> dict[str, Any] | None:
    for entry in _get(idle, "levels") or []:
        if entry["target"] == target:
            return dict(entry)
    return None


def render(results: dict[str, Any]) -> str:
    relay = results["servers"].get("relay")
    pushpin = results["servers"].get("pushpin")
    plan = results["plan"]
    clients = plan["clients"]
    stack = _get(relay, "server_stats")
    lines = [
        f"### SSE fan-out: relay vs Pushpin — {results['when']}, "
        f"{results['machine']['cpus']} CPUs, {plan['workers']} client processes",
        "",
        f"relay: uvicorn, loop {_get(stack, 'loop') or '?'}, http {_get(stack, 'http') or '?'},"
        f" gc {_gc_setting(_get(stack, 'gc_setting'))};"
        " Pushpin: Debian package, message_rate/hwm "
        f"{plan['message_rate']:,}/{plan['message_hwm']:,}.",
        _limits(results),
        "",
        "| measure | relay | Pushpin | relay / Pushpin | target |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, a: str, b: str, ratio: str = "", target: str = "") -> None:
        lines.append(f"| {name} | {a} | {b} | {ratio} | {target} |")

    for server, data in (("relay", relay), ("Pushpin", pushpin)):
        if data and "error" in data:
            row(f"**{server} failed**", data["error"] if server == "relay" else "", "")
    rb, pb = _get(relay, "burst"), _get(pushpin, "burst")
    rs, ps = _get(relay, "steady"), _get(pushpin, "steady")
    burst = f"burst {plan['burst_events']} ev (batches of {plan['batch']}) → {clients} clients"
    row(
        f"{burst}: deliveries/s",
        _num(_get(rb, "deliveries_per_s")),
        _num(_get(pb, "deliveries_per_s")),
        _ratio(_get(rb, "deliveries_per_s"), _get(pb, "deliveries_per_s")),
        "≥ 0.5 x Pushpin",
    )
    row("burst: delivered", _delivered(rb), _delivered(pb), "", "all")
    row("burst: latency p50 / p99 / max (ms)", _latency(rb), _latency(pb))
    row(
        "burst: server CPU",
        _cpu(rb),
        _cpu(pb),
        _ratio(_get(rb, "server_cpu_s"), _get(pb, "server_cpu_s")),
    )
    row("burst: machine CPU busy", _busy(rb), _busy(pb))
    row("burst: relay GC passes (time in them)", _gc_row(rb), "n/a (C++/Rust)")
    rate, length = _num(plan["steady_rate"]), _num(plan["steady_seconds"], 1)
    steady = f"steady {rate} ev/s x {length} s → {clients} clients"
    row(f"{steady}: delivered", _delivered(rs), _delivered(ps), "", "all")
    row(
        "steady: latency p50 / p99 / max (ms)",
        _latency(rs),
        _latency(ps),
        _ratio(_get(rs, "latency", "p99_ms"), _get(ps, "latency", "p99_ms")),
        f"p99 < {TARGET_P99_MS:.0f} ms",
    )
    row(
        "steady: server CPU",
        _cpu(rs),
        _cpu(ps),
        _ratio(_get(rs, "server_cpu_s"), _get(ps, "server_cpu_s")),
    )
    row("steady: machine CPU busy", _busy(rs), _busy(ps))
    row("steady: relay GC passes (time in them)", _gc_row(rs), "n/a (C++/Rust)")
    ri, pi = _get(relay, "idle"), _get(pushpin, "idle")
    row(
        "idle: server RSS with 0 clients (KiB)",
        _num(_get(ri, "baseline_rss_kib")),
        _num(_get(pi, "baseline_rss_kib")),
    )
    for target in plan["idle_levels"]:
        rl, pl = _level(ri, target), _level(pi, target)
        row(
            f"idle {target:,}: connected",
            _connected(rl),
            _connected(pl),
            "",
            "all" if target < TARGET_IDLE_CONNECTIONS else "all 10,000",
        )
        row(
            f"idle {target:,}: RSS per connection",
            _kib(rl),
            _kib(pl),
            _ratio(_get(rl, "rss_per_conn_kib"), _get(pl, "rss_per_conn_kib")),
            f"< {TARGET_KIB_PER_CONN:.0f} KiB",
        )
    row(
        "idle: one full GC pass in the relay at "
        + " / ".join(f"{t:,}" for t in plan["idle_levels"])
        + " clients (ms)",
        " / ".join(
            _num(_get(_level(ri, t), "gc_full_pass", "full_gc_ms"), 0) for t in plan["idle_levels"]
        ),
        "n/a",
    )
    top = plan["idle_levels"][-1]
    row(
        f"idle {top:,}: RSS growth per connection by process",
        _by_process(ri, top),
        _by_process(pi, top),
    )
    row(
        f"idle {plan['idle_levels'][-1]:,}: after hold, one event reached",
        _check(ri),
        _check(pi),
    )
    lines += ["", *verdict(results)]
    return "\n".join(lines)


def _gc_setting(setting: dict[str, Any] | None) -> str:
    if not setting:
        return "?"
    if not setting["enabled"]:
        return "OFF (what-if)"
    threshold = tuple(setting["threshold"])
    if threshold == GC_THRESHOLDS:
        return f"production's (start frozen, thresholds {threshold})"
    return "default" if threshold == (700, 10, 10) else f"thresholds {threshold} (what-if)"


def _gc_row(scenario: dict[str, Any] | None) -> str:
    pauses = _get(scenario, "gc_pauses")
    if not pauses:
        return "-"
    full = pauses.get("2", {})
    young = sum(p["total_ms"] for g, p in pauses.items() if g != "2")
    return (
        f"{full.get('count', 0)} full, {_num(full.get('total_ms'), 0)} ms"
        f" (young {_num(young, 0)} ms)"
    )


def _limits(results: dict[str, Any]) -> str:
    """The open-file limits each process ran with (10,000 clients need them raised)."""
    parts = [f"benchmark {'/'.join(map(str, results['machine']['nofile_soft_hard']))}"]
    for name, data in results["servers"].items():
        for process, limit in (_get(data, "idle", "server_nofile") or {}).items():
            text = "/".join(map(str, limit)) if limit else "?"
            parts.append(f"{name} {process} {text}" if process != name else f"{name} {text}")
    clients = _get(results["servers"].get("relay") or results["servers"].get("pushpin"), "idle")
    for limit in (_get(clients, "levels", 0, "client_nofile") or [])[:1]:
        parts.append(f"clients {'/'.join(map(str, limit))}")
    return "Open-file limits (soft/hard): " + ", ".join(parts) + "."


def _connected(level: dict[str, Any] | None) -> str:
    if not level:
        return "-"
    text = f"{level['open']:,} / {level['target']:,}"
    failures = {k: v for k, v in level["connect_outcomes"].items() if k != "ok"}
    if failures:
        text += " (" + ", ".join(f"{k}: {v}" for k, v in failures.items()) + ")"
    return text


def _by_process(idle: dict[str, Any] | None, target: int) -> str:
    level = _level(idle, target)
    base = _get(idle, "baseline_rss_kib_by_process") or {}
    if not level or not level.get("open") or "rss_kib_by_process" not in level:
        return "-"
    grown = {
        name: (kib - base.get(name, 0)) / level["open"]
        for name, kib in level["rss_kib_by_process"].items()
    }
    return ", ".join(
        f"{name} {per:.1f}" for name, per in sorted(grown.items(), key=lambda x: -x[1])
    )


def _kib(level: dict[str, Any] | None) -> str:
    if not level or level.get("rss_per_conn_kib") is None:
        return "-"
    return f"{level['rss_per_conn_kib']:.1f} KiB"


def _check(idle: dict[str, Any] | None) -> str:
    if not idle or "held" not in idle:
        return "-"
    delivered, held, after = idle["check_delivered"], idle["held"], idle["open_after_hold"]
    return f"{delivered:,} / {held:,} (open after hold {after:,})"


def verdict(results: dict[str, Any]) -> list[str]:
    """Plain statements of where the relay meets the issue's targets and where it does not."""
    relay = results["servers"].get("relay")
    pushpin = results["servers"].get("pushpin")
    if not relay or "error" in relay:
        return ["Relay: no result."]
    out = ["**Against the issue's targets (relay):**", ""]
    idle = relay["idle"]
    top = idle["levels"][-1]
    held_all = top["open"] >= top["target"] and idle["check_delivered"] >= top["target"]
    if top["target"] >= TARGET_IDLE_CONNECTIONS:
        out.append(
            f"- {'MET' if held_all else 'MISSED'}: hold {TARGET_IDLE_CONNECTIONS:,} connections "
            f"— {top['open']:,} open, {idle['check_delivered']:,} got the check event."
        )
    else:
        out.append(
            f"- NOT TESTED: {TARGET_IDLE_CONNECTIONS:,} connections (largest level run: "
            f"{top['target']:,}, {'all held' if held_all else 'not all held'})."
        )
    mine = _get(relay, "burst", "deliveries_per_s")
    theirs = _get(pushpin, "burst", "deliveries_per_s")
    basis = "measured Pushpin"
    if not isinstance(theirs, int | float) or not theirs:
        theirs, basis = PUSHPIN_BURST_REFERENCE, "Pushpin's ~110k/s from the issue"
    if isinstance(mine, int | float):
        out.append(
            f"- {'MET' if mine >= theirs / 2 else 'MISSED'}: burst ≥ half of {basis} "
            f"— {mine:,.0f}/s vs {theirs:,.0f}/s ({mine / theirs:.2f}x)."
        )
    steady = relay.get("steady")
    if steady:
        p99 = steady["latency"]["p99_ms"]
        ok = steady["delivered"] >= steady["expected"] and p99 is not None and p99 < TARGET_P99_MS
        out.append(
            f"- {'MET' if ok else 'MISSED'}: steady, every event delivered with p99 < "
            f"{TARGET_P99_MS:.0f} ms — {steady['delivered']:,}/{steady['expected']:,}, "
            f"p99 {p99} ms."
        )
        per = steady.get("server_cpu_us_per_delivery")
        clients = relay.get("clients") or 0
        if per and clients:
            fan_out_ms = per * clients / 1000
            load = fan_out_ms * steady["rate"] / 1000
            out.append(
                f"  One event to {clients:,} clients cost the relay ~{fan_out_ms:.0f} ms of CPU "
                f"({per:.0f} µs per delivery, one write per client), on one core: "
                f"{load:.0%} of that core at {steady['rate']:g} ev/s, shared with the clients."
            )
    per = top.get("rss_per_conn_kib")
    if per is not None:
        out.append(
            f"- {'MET' if per < TARGET_KIB_PER_CONN else 'MISSED'}: < {TARGET_KIB_PER_CONN:.0f} "
            f"KiB per idle connection — {per:.1f} KiB at {top['open']:,} connections."
        )
    if results.get("notes"):
        out += ["", *(f"Note: {note}" for note in results["notes"])]
    return out
