"""Peak memory of a snippet, measured in a fresh Python process (so other tests' memory does not count)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

_MARKER = "MEMORY_GROWTH_MB"


def _run(parts: list[str], growth_expression: str) -> tuple[str, int]:
    """Run the dedented ``parts`` in a new interpreter, then print ``growth_expression``; return what was printed before it and its value."""
    script = "\n".join([*(textwrap.dedent(part) for part in parts), f"print('\\n{_MARKER}', {growth_expression})"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    output, _, growth = done.stdout.rpartition(_MARKER)
    return output.strip(), int(growth)


def peak_rss_growth_mb(setup: str, work: str) -> tuple[str, int]:
    """Run ``setup`` then ``work`` in a new interpreter; return what ``work`` printed and the peak RSS growth (MiB) during it."""
    return _run(
        [
            "import resource",
            setup,
            "_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            work,
            "_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        ],
        "(_after - _before) // 1024",
    )


_ANONYMOUS_SAMPLER = """
    import threading, time
    def _anon_kb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))
    _peak = [0]
    def _sample():
        while True:
            _peak[0] = max(_peak[0], _anon_kb())
            time.sleep(0.001)
    _base = _anon_kb()
    threading.Thread(target=_sample, daemon=True).start()
"""


def peak_anonymous_growth_mb(setup: str, work: str) -> tuple[str, int]:
    """Like ``peak_rss_growth_mb``, but counting anonymous memory only (``RssAnon``, sampled every millisecond).

    Pages of memory-mapped files are left out: the kernel drops them under pressure, so they do not bound what fits.
    """
    return _run([setup, _ANONYMOUS_SAMPLER, work, "time.sleep(0.01)"], "(_peak[0] - _base) // 1024")
