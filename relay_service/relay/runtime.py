"""Process settings the relay runs with.

CPython's cyclic garbage collector walks every tracked object on a full pass, and a relay
keeps a couple of hundred per connection: measured here, a full pass took ~160 ms at
1,000 clients and ~1 s at 10,000, and no client receives anything meanwhile (it set the
steady-state p99; see BENCHMARKS.md). The relay makes few reference cycles, so passes
can be far rarer, and what exists at start (imports, the app) is frozen out of them.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 50, 1_000)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
