"""Fixtures of the system tests: a real systemd (Debian bookworm in a container), driftgate
installed in it by ``deploy/install.sh`` once per session, and a fresh gateway per test.

Layers, bottom up: the cached debootstrap root (never written), the *installed* layer (the
upper directory of the session's one run of install.sh), and each test's own upper layer. So
a test starts from a gateway exactly as install.sh left it, and nothing it does reaches the
next test.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.path.dirname(__file__) not in sys.path:
    sys.path.insert(0, os.path.dirname(__file__))

from container import (
    Container,
    Overlay,
    Unavailable,
    check_machine,
    ensure_root,
    ensure_wheels,
    root_cached,
)
from floor import INSTALL, SRC, WHEELS, Installed

REPO = Path(__file__).resolve().parents[2]


FIGURES_ENV = "DRIFTGATE_SYSTEM_FIGURES"
"""bench/system_suite.py sets it to a file: the phases of the run are written there."""
figures: dict[str, object] = {"boot_s": []}


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(FIGURES_ENV)
    if path and len(figures) > 1:
        Path(path).write_text(json.dumps(figures))


def _unavailable(exc: Unavailable) -> None:
    pytest.skip(f"system tests: {exc}")


@pytest.fixture(scope="session")
def system_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached bookworm root (debootstrap, once per machine)."""
    try:
        check_machine()
        started = time.monotonic()
        figures["root_cached"] = root_cached()
        root = ensure_root(tmp_path_factory.mktemp("system-logs"))
        figures["root_s"] = round(time.monotonic() - started, 1)
        return root
    except Unavailable as exc:
        _unavailable(exc)
        raise


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, system_root: Path) -> Path:
    """The wheels install.sh installs from inside (``--wheels``), from the host's versions."""
    del system_root  # only to skip first where containers cannot run
    try:
        started = time.monotonic()
        wheels = ensure_wheels(REPO, Path(sys.executable), tmp_path_factory.mktemp("wheel-logs"))
        figures["wheels_s"] = round(time.monotonic() - started, 1)
        return wheels
    except Unavailable as exc:
        _unavailable(exc)
        raise


def binds(wheels: Path) -> dict[Path, str]:
    return {REPO: SRC, wheels: WHEELS}


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the overlays' writable layers go: a tmpfs of the session's own, so that the 300
    MB of each installation are gone with one umount, not a minute of deleting files (the disk
    is the fallback where a tmpfs cannot be mounted)."""
    path = tmp_path_factory.mktemp("overlays")
    mount = ["mount", "-t", "tmpfs", "-o", "size=4g,mode=0700", "tmpfs", str(path)]
    mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    yield path
    if mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def installed(
    tmp_path_factory: pytest.TempPathFactory, system_root: Path, wheelhouse: Path, scratch: Path
) -> Installed:
    """driftgate installed by install.sh on a fresh gateway, once per session."""
    del tmp_path_factory
    work = scratch / "installed"
    overlay = Overlay([system_root], work)
    try:
        overlay.mount()
        with Container(overlay.merged, work, binds(wheelhouse)) as gw:
            dry = gw.sh(f"{INSTALL} --dry-run --wheels {WHEELS}", timeout=120)
            left = [p for p in ("/opt/driftgate", "/etc/driftgate", "/var/lib/driftgate",
                                "/etc/systemd/system/driftgate.service")
                    if gw.sh(f"test -e {p}", check=False).returncode == 0]  # fmt: skip
            started = time.monotonic()
            result = gw.sh(f"{INSTALL} --wheels {WHEELS}", timeout=900)
            seconds = time.monotonic() - started
            figures["install_s"] = round(seconds, 1)
            gw.sh("journalctl --rotate --vacuum-files=1", check=False)
    except Unavailable as exc:
        overlay.unmount()
        _unavailable(exc)
        raise
    finally:
        overlay.unmount()
    return Installed(
        layer=overlay.upper,
        root=system_root,
        wheels=wheelhouse,
        dry_run=dry.stdout + dry.stderr,
        dry_run_left=left,
        output=result.stdout + result.stderr,
        seconds=seconds,
    )


_gateways = itertools.count(1)


@pytest.fixture
def gateway(installed: Installed, scratch: Path) -> Iterator[Container]:
    """A booted gateway with driftgate installed (not yet enabled), all of its own."""
    work = scratch / f"gateway{next(_gateways)}"
    overlay = Overlay([installed.layer, installed.root], work)
    with overlay, Container(overlay.merged, work, binds(installed.wheels)) as gw:
        figures["boot_s"].append(round(gw.boot_seconds, 2))  # type: ignore[attr-defined]
        yield gw
        if gw.sh("systemctl is-active driftgate", check=False).stdout.strip() != "inactive":
            # What the agent said, for a failing test's report.
            print(gw.journal("driftgate", lines=60))
    shutil.rmtree(work, ignore_errors=True)  # a reinstall leaves 300 MB (of memory) there
