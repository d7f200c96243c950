"""Peak memory of a snippet, measured in a fresh Python process (so other tests' memory does not count)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def peak_rss_growth_mb(setup: str, work: str) -> tuple[str, int]:
    """Run ``setup`` then ``work`` in a new interpreter; return what ``work`` printed and the peak RSS growth (MiB) during it."""
    script = "\n".join(
        [
            "import resource",
            textwrap.dedent(setup),
            "_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            textwrap.dedent(work),
            "_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            "print('\\nRSS_GROWTH_MB', (_after - _before) // 1024)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    output, _, growth = done.stdout.rpartition("RSS_GROWTH_MB")
    return output.strip(), int(growth)


def peak_anonymous_growth_mb(setup: str, work: str) -> tuple[str, int]:
    """Like ``peak_rss_growth_mb``, but counting anonymous memory only (``RssAnon``, sampled every millisecond).

    Pages of memory-mapped files are left out: the kernel drops them under pressure, so they do not bound what fits.
    """
    sampler = """
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
    script = "\n".join([textwrap.dedent(setup), textwrap.dedent(sampler), textwrap.dedent(work),
                        "time.sleep(0.01)", "print('\\nANON_GROWTH_MB', (_peak[0] - _base) // 1024)"])
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    output, _, growth = done.stdout.rpartition("ANON_GROWTH_MB")
    return output.strip(), int(growth)
