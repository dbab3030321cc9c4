"""How ``make test`` spreads the suite over pytest-xdist's workers, for every path it runs
(tests/ and notebooks/ alike, so `pytest -n auto --dist loadgroup notebooks` works too)."""

import os

import pytest


def work_unit(nodeid):
    """What ``make test`` (``pytest-xdist --dist loadgroup``) sends to one worker as a
    whole: a notebook, whose cells share one kernel and run in order; else one test. (A
    module-scoped fixture is then built once per worker that runs the module's tests.)"""
    path = nodeid.split("::", 1)[0]
    return path if path.endswith(".ipynb") else nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the groups ``work_unit`` draws, not xdist_group marks
    (xdist 3.8 marks a grouped test by renaming its node id, which pytest 9 ignores)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: two workers per CPU, as most of a test's time is waiting (speech pacing,
    sockets, subprocesses starting), not computing. PYTEST_XDIST_AUTO_NUM_WORKERS overrides."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return 2 * _cpus()


def _cpus():
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
