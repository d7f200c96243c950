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
