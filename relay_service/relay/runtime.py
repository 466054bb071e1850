"""Process settings the relay runs with.

CPython's cyclic garbage collector walks every tracked object on a full pass, and a relay
keeps a couple of hundred per connection: measured here, a full pass took ~160 ms at
1,000 clients and ~1 s at 10,000, and no client receives anything meanwhile (it set the
steady-state p99; see BENCHMARKS.md). The relay makes few reference cycles, so passes
can be far rarer, and what exists at start (imports, the app) is frozen out of them.

Rarer, not never: each connection leaves ~120 objects in reference cycles, and those still
alive at a middle-generation pass move to the oldest generation, which only a full pass
sweeps. With a full pass after 1,000 middle ones (every few days at a steady churn) the
soak test's figures extrapolate to 100-200 MB a day; after 10 it is every hour or so
under that churn (RELIABILITY.md, soak).
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 50, 10)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
