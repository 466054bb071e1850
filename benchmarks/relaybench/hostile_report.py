"""The hostile-client benchmark's verdict and its table (markdown, for BENCHMARKS.md)."""

from __future__ import annotations

from typing import Any

from benchmarks.relaybench.report import _get, _num

CURSORS = {
    "others": "it owns no workers and the cursors are ids of others' events",
    "own": "it owns one worker (1 event in 100) and the cursors are ids of its events",
}


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """PASS: pooled hostile p99 within `max_ratio` of undisturbed, and nothing undelivered."""
    limit = results["plan"]["max_ratio"]
    pooled = results.get("pooled") or {}
    hostile_p99 = _get(pooled, "hostile", "p99_ms")
    calm_p99 = _get(pooled, "undisturbed", "p99_ms")
    ratio = hostile_p99 / calm_p99 if hostile_p99 is not None and calm_p99 else None
    phases = results.get("phases", [])
    delivered = bool(phases) and all(p["all_delivered"] for p in phases)
    by_repetition = []
    for repetition in sorted({p["repetition"] for p in phases}):
        pair = {p["kind"]: p for p in phases if p["repetition"] == repetition}
        hostile = _get(pair, "hostile", "latency", "p99_ms")
        calm = _get(pair, "undisturbed", "latency", "p99_ms")
        by_repetition.append(round(hostile / calm, 2) if hostile is not None and calm else None)
    return {
        "ratio_p99": None if ratio is None else round(ratio, 2),
        "ratio_p99_by_repetition": by_repetition,
        "all_delivered": delivered,
        "max_ratio": limit,
        "pass": ratio is not None and ratio <= limit and delivered and "error" not in results,
    }


def _answers(attack: dict[str, Any] | None) -> str:
    if not attack:
        return "-"
    return " · ".join(f"{name}: {count:,}" for name, count in attack["outcomes"].items()) or "none"


def _connects(attack: dict[str, Any] | None) -> str:
    if not attack:
        return "-"
    return (
        f"{attack['connects']:,} ({_num(attack['connects_per_s'], 0)}/s; answer p50 / max "
        f"{_num(attack['answer_ms']['p50'], 0)} / {_num(attack['answer_ms']['max'], 0)} ms;"
        f" its CPU {_num(attack['cpu_s'], 2)} s)"
    )


def _delivered(phase: dict[str, Any]) -> str:
    text = f"{phase['delivered']:,} / {phase['expected']:,}"
    if not phase["all_delivered"]:
        text += f" ({phase['outcome']}; {len(phase['principals_short'])} principals short)"
    cut = sum(v for k, v in phase["relay_counters"].items() if k.startswith("cutoffs"))
    return text + (f"; relay cut off {cut} streams" if cut else "")


def _relay_cpu(phase: dict[str, Any]) -> str:
    threads = phase.get("relay_threads_cpu_s")
    split = (
        f"loop {_num(threads['event_loop'], 2)} + other threads "
        f"{_num(threads['other_threads'], 2)}; "
        if threads
        else ""
    )
    return (
        f"{_num(phase['server_cpu_s'], 2)} s ({split}"
        f"{_num(phase['machine_busy_pct'], 0)} % machine)"
    )


def _latency(phase: dict[str, Any]) -> str:
    lat = phase["latency"]
    return f"{_num(lat['p50_ms'], 1)} / {_num(lat['p99_ms'], 1)} / {_num(lat['max_ms'], 0)}"


def render(results: dict[str, Any]) -> str:
    plan, relay, honest = results["plan"], results["relay"], results["honest"]
    depths = " / ".join(f"{d:,}" for d in plan["cursor_depths"])
    env = ", ".join(f"{k}={v}" for k, v in relay["environment"].items())
    limits = f"{env}, other limits at their defaults" if env else "every limit at its default"
    addresses = relay.get("addresses") or {}
    honest_from = (
        f" from {addresses['honest_count']} addresses ({addresses['honest']})" if addresses else ""
    )
    hostile_from = f" from {addresses['hostile']}" if addresses else ""
    lines = [
        f"### Hostile reconnects beside honest streams (issue 13) — {results['when']}, "
        f"{results['machine']['cpus']} CPUs",
        "",
        f"Relay: {relay['code']}; {relay['authentication']}; {limits}; replay ring "
        f"prefilled with {plan['ring']:,} events. Honest: "
        f"{plan['clients']:,} streams{honest_from} of {honest['principals']} principals ("
        f"{honest['all']} admins, {honest['own']} users owning the events' workers, "
        f"{honest['none']} users owning none), "
        f"{plan['workers']} client processes; {_num(plan['rate'])} ev/s x "
        f"{_num(plan['seconds'], 0)} s per phase, phases alternating, "
        f"{plan['repetitions']} repetitions. Hostile: one `user` token, "
        f"{plan['hostile_connections']} connections{hostile_from} in its own process, "
        f"reconnecting at "
        f"once with `Last-Event-ID` {depths} events back, reading the first frame, resetting;"
        f" {CURSORS[plan['cursors']]}.",
        "",
        "| phase | delivered | latency p50 / p99 / max (ms) | relay CPU | hostile connects "
        "| answered | `/live` p50 / max (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for phase in results.get("phases", []):
        live = phase["live_probe"]
        lines.append(
            f"| {phase['kind']} {phase['repetition']} | {_delivered(phase)} | "
            f"{_latency(phase)} | {_relay_cpu(phase)} | "
            f"{_connects(phase['hostile'])} | {_answers(phase['hostile'])} | "
            f"{_num(live['p50_ms'], 1)} / {_num(live['max_ms'], 0)} |"
        )
    judged = results.get("verdict") or verdict(results)
    pooled = results.get("pooled") or {}
    lines += [
        "",
        f"**p99 hostile / undisturbed: {_num(judged['ratio_p99'], 2)}** (all deliveries of "
        f"each kind pooled: {_num(_get(pooled, 'hostile', 'p99_ms'), 1)} vs "
        f"{_num(_get(pooled, 'undisturbed', 'p99_ms'), 1)} ms; per repetition "
        f"{', '.join(_num(r, 2) for r in judged['ratio_p99_by_repetition']) or '-'}); "
        f"every event delivered: "
        f"{'yes' if judged['all_delivered'] else 'no'} → "
        f"**{'PASS' if judged['pass'] else 'FAIL'}** (target ≤ {judged['max_ratio']:g}x).",
    ]
    busy = [p["quiet_before"]["other_cores"] for p in results.get("phases", [])]
    if busy:
        lines.append(
            f"\nOther jobs on the machine before each phase (after waiting up to "
            f"{_num(plan['quiet_wait_seconds'], 0)} s for quiet): {_num(min(busy), 2)} to "
            f"{_num(max(busy), 2)} cores."
        )
    if plan.get("profile_relay"):
        lines.append(
            "\nProfiled: cProfile ran in the relay (all its threads) in every phase; its "
            "overhead is in these latencies and CPU figures."
        )
    if "error" in results:
        lines.append(f"\n**The run failed:** {results['error']}")
    return "\n".join(lines)
