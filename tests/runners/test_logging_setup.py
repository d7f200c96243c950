"""``runners.logging_setup`` in a fresh interpreter: the state a console script starts from (no handler yet)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("DASK_LOGGING__DISTRIBUTED", "MMFEAT_DASK_LOGGING")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**environment, **env})


def test_beams_import_warning_is_dropped_and_info_shows_after_configure():
    done = _python("""
        import logging
        from runners import logging_setup
        logging_setup.install_handler()
        import apache_beam  # logs 'apitools not found' on the root logger
        logging.getLogger("x").info("hidden: the level is WARNING until configure")
        logging_setup.configure("INFO")
        logging.getLogger("x").info("shown")
        logging.getLogger("apache_beam.y").info("hidden: Beam below WARNING")
        logging.getLogger("apache_beam.y").warning("beam warning")
        logging.getLogger("apache_beam.runners.worker.sdk_worker_main").warning("No semi_persistent_directory found: x")
        logging.warning("a root warning")
    """)
    assert done.returncode == 0, done.stderr
    messages = [line.split(": ", 1)[1] for line in done.stderr.splitlines()]
    assert messages == ["shown", "beam warning", "a root warning"], done.stderr
    assert [line.split()[2:4] for line in done.stderr.splitlines()] == [["INFO", "x:"], ["WARNING", "apache_beam.y:"],
                                                                         ["WARNING", "root:"]]


def test_a_configured_root_logger_is_left_alone():
    done = _python("""
        import logging, sys
        logging.basicConfig(level=logging.ERROR, format="theirs %(message)s", stream=sys.stdout)
        from runners import logging_setup
        logging_setup.install_handler()
        logging_setup.configure("DEBUG")
        assert not logging_setup.owns_root_logger()
        assert logging.getLogger().level == logging.ERROR and len(logging.getLogger().handlers) == 1
        logging.getLogger("x").error("kept")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "theirs kept\n" and done.stderr == ""


def test_dask_is_quieted_unless_the_user_chose_its_level():
    code = """
        import os
        from runners import logging_setup
        logging_setup.configure("INFO")
        import dask
        print(os.environ["DASK_LOGGING__DISTRIBUTED"], dask.config.get("logging.distributed"))
    """
    assert _python(code).stdout == "warning warning\n"
    assert _python(code, DASK_LOGGING__DISTRIBUTED="info").stdout == "info info\n"
    debug = _python(code.replace('"INFO"', '"DEBUG"'))
    assert debug.stdout == "debug debug\n", debug.stderr
