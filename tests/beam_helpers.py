"""Beam helpers for tests."""
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline


def in_process_pipeline() -> TestPipeline:
    """A ``TestPipeline`` on the in-process ``FnApiRunner`` (the DirectRunner would first try to fetch Prism)."""
    return TestPipeline(runner=FnApiRunner())
