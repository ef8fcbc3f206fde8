"""A Debian bookworm gateway with its own systemd, booted in a container for the system tests.

The host has no systemd as PID 1, so the tests boot one: ``debootstrap`` builds a minimal
bookworm root once (cached under ``~/.cache/driftgate/system/``, rebuilt when missing or when
the recipe changes), and each container runs on an overlay of it, so tests never change the
cached root or each other's files. ``systemd-nspawn --boot`` starts the container's systemd;
``nsenter`` runs commands inside (``systemctl``, ``journalctl``, ``install.sh``). The container
shares the host's network namespace: the agent inside reaches the InfluxDB that the host's
fixtures start on 127.0.0.1.

Plain classes without pytest, like ``tests/servers.py``: a developer can boot one by hand::

    root = ensure_root(Path("/tmp/logs"))
    with Overlay([root], Path("/tmp/gw")) as fs, Container(fs.merged, Path("/tmp/gw")) as gw:
        print(gw.sh("systemctl is-system-running").stdout)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "socat")
"""What a Raspberry Pi OS Lite gateway has that matters here; socat makes serial ptys inside."""
MASKED = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "e2scrub_all.timer",
)
"""Timers that would run apt or disk jobs in the background of a test."""
RECIPE = 1  # bump when the root's build steps change: a new cache entry is built

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_ENV = {
    "PATH": CONTAINER_PATH,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}
"""The whole environment of a command inside: nothing of the host's (PIP_*, PYTHON*, ...)."""

_names = itertools.count(1)


class Unavailable(Exception):
    """This machine cannot run the system tests (not root, no containers, no way to build the
    root); the message says why, for the skip reason."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "driftgate" / "system"


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time per cache entry (another engineer's run may be building it)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require(binary: str, package: str) -> str:
    """The path of a host program, or a failure naming the Debian package (scripts/test
    installs it)."""
    found = shutil.which(binary)
    if found is None:
        raise FileNotFoundError(
            f"{binary} not found: install the Debian package {package!r} "
            f"(apt-get install -y {package}); ./scripts/test installs it as root"
        )
    return found


def check_machine() -> None:
    """Raise Unavailable where containers cannot run at all."""
    if sys.platform != "linux":
        raise Unavailable("system tests boot a Linux container: Linux only")
    if os.geteuid() != 0:
        raise Unavailable("system tests boot a container with systemd-nspawn and mount overlays: "
                          "run them as root")  # fmt: skip


def root_path() -> Path:
    """Where the cached root of this recipe is (or will be)."""
    return cache_dir() / f"{SUITE}-{_key(SUITE, MIRROR, PACKAGES, MASKED, RECIPE)}"


def root_cached() -> bool:
    """Whether the root is built already."""
    return (root_path() / ".driftgate-root").exists()


def ensure_root(logs: Path) -> Path:
    """The cached bookworm root, built with debootstrap if it is missing (minutes, once)."""
    root = root_path()
    name = root.name
    done = root / ".driftgate-root"
    if done.exists():
        return root
    debootstrap = require("debootstrap", "debootstrap")
    with _locked(name):
        if done.exists():
            return root
        partial = root.with_name(name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / "debootstrap.log"
        command = [
            debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
            SUITE, str(partial), MIRROR,
        ]  # fmt: skip
        with log.open("wb") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=3600,
                                    check=False)  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = log.read_text(errors="replace").splitlines()[-5:]
            raise Unavailable(
                f"cannot build the container root: {' '.join(command)} exited "
                f"{result.returncode} (no access to {MIRROR}?): " + " | ".join(tail)
            )
        units = partial / "etc" / "systemd" / "system"
        for unit in MASKED:
            (units / unit).unlink(missing_ok=True)
            (units / unit).symlink_to("/dev/null")
        (partial / "etc" / "hostname").write_text("gateway\n")
        (partial / ".driftgate-root").write_text(" ".join(command) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


def requirements(repo: Path) -> list[str]:
    """What install.sh installs from a wheel directory: the dependencies, the default extras
    (plot, report) and what building driftgate itself needs."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    deps = list(project["project"]["dependencies"])
    for extra in ("plot", "report"):
        deps += project["project"]["optional-dependencies"][extra]
    return deps + list(project["build-system"]["requires"])


def ensure_wheels(repo: Path, python: Path, logs: Path) -> Path:
    """A wheel directory for ``install.sh --wheels`` (the container has no package index of
    its own): the versions installed in the host's venv, so the container runs what the rest
    of the suite tested. Built with pip once per set of versions."""
    reqs = requirements(repo)
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    pins = sorted(line for line in freeze.splitlines() if line and not line.startswith("-e"))
    name = f"wheels-{_key(reqs, pins)}"
    wheels = cache_dir() / name
    done = wheels / ".driftgate-wheels"
    if done.exists():
        return wheels
    with _locked(name):
        if done.exists():
            return wheels
        partial = wheels.with_name(name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        (partial / "constraints.txt").write_text("\n".join(pins) + "\n")
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / "pip-wheel.log"
        command = [
            str(python), "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(partial),
            "--constraint", str(partial / "constraints.txt"), *reqs,
        ]  # fmt: skip
        with log.open("wb") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800,
                                    check=False)  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = log.read_text(errors="replace").splitlines()[-3:]
            raise Unavailable(f"cannot gather the wheels for the container: pip wheel exited "
                              f"{result.returncode}: " + " | ".join(tail))  # fmt: skip
        (partial / ".driftgate-wheels").write_text(" ".join(command) + "\n")
        shutil.rmtree(wheels, ignore_errors=True)
        partial.rename(wheels)
    return wheels


class Overlay:
    """An overlay file system: read-only lower layers (the cached root, an installed layer) and
    a writable upper one of this test's own; ``upper`` alone can become another's lower."""

    def __init__(self, lowers: Sequence[Path], workdir: Path) -> None:
        self.lowers = list(lowers)  # the first is the top one
        self.upper = workdir / "upper"
        self.work = workdir / "work"
        self.merged = workdir / "merged"
        self.mounted = False

    def mount(self) -> Self:
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        lowers = ":".join(str(p) for p in self.lowers)
        options = f"lowerdir={lowers},upperdir={self.upper},workdir={self.work}"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.merged)],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            raise Unavailable(f"cannot mount an overlay file system here: {result.stderr.strip()}")
        self.mounted = True
        return self

    def unmount(self) -> None:
        if not self.mounted:
            return
        for _ in range(50):
            if subprocess.run(["umount", str(self.merged)], capture_output=True,
                              check=False).returncode == 0:  # fmt: skip
                self.mounted = False
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.merged)], capture_output=True, check=False)
        self.mounted = False

    def __enter__(self) -> Self:
        return self.mount()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()


class Container:
    """A booted container: its own systemd as PID 1, the host's network."""

    def __init__(self, root: Path, workdir: Path, binds: Mapping[Path, str] | None = None):
        self.root = root
        self.workdir = workdir
        self.binds = dict(binds or {})
        self.name = f"dg-{os.getpid()}-{next(_names)}"
        self.log_path = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's systemd, as the host sees it
        self.boot_seconds = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def boot(self, timeout: float = 90.0) -> Self:
        nspawn = require("systemd-nspawn", "systemd-container")
        require("nsenter", "util-linux")
        command = [
            nspawn, "--quiet", "-D", str(self.root), "--boot", f"--machine={self.name}",
            # No systemd on the host: no machined to register with, no scope unit to create.
            "--register=no", "--keep-unit", "--console=passive",
        ]  # fmt: skip
        command += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + timeout
        while not self.pid:
            if self.proc.poll() is not None:
                raise Unavailable(f"systemd-nspawn cannot boot a container here (exit "
                                  f"{self.proc.returncode}): {self.log_tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the container did not start: {self.log_tail()}")
            self.pid = self._init_pid()
            time.sleep(0.05)
        while True:  # until its systemd answers (its socket comes a moment after its start)
            state = self.sh("systemctl is-system-running --wait", check=False, timeout=timeout)
            if state.stdout.strip() or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if state.stdout.strip() not in {"running", "degraded"}:
            failed = self.sh("systemctl --failed --no-legend", check=False).stdout
            self.stop()
            raise RuntimeError(f"the container's systemd is {state.stdout.strip()!r} "
                               f"({state.stderr.strip()}): {failed}")  # fmt: skip
        self.boot_seconds = time.monotonic() - started
        return self

    def _init_pid(self) -> int:
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return 0
        for pid in children.split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def stop(self) -> None:
        """Power off at once: SIGKILL to the container's init ends every process inside."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.pid = 0

    def __enter__(self) -> Self:
        return self.boot()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- inside -----------------------------------------------------------------------------

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script as root inside (its own clean environment); check: fail with its
        output if it exits non-zero."""
        assert self.pid, "the container is not running"
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "/bin/sh", "-c", script],
            env=CONTAINER_ENV, capture_output=True, text=True, timeout=timeout, input=input,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"inside the container, {script!r} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit (``systemctl show -p PROP --value``)."""
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def journal(self, unit: str, *, lines: int = 400) -> str:
        """The unit's journal, messages only (``-o cat``)."""
        return self.sh(f"journalctl -u {unit} --no-pager -o cat -n {lines}").stdout

    def on_disk(self, inside: str) -> Path:
        """A path of the container's disk (its overlay) as the host sees it: for files SQLite
        opens (it resolves the /proc/<pid>/root link to the host's own root); not /run or /dev,
        which the container mounts for itself."""
        return self.root / inside.lstrip("/")

    def path(self, inside: str) -> Path:
        """A path inside as the host sees it, through the container's root (so /run and /dev are
        the container's own). Symlinks are resolved inside: the kernel would resolve an
        absolute link target against the host's root."""
        root = Path(f"/proc/{self.pid}/root")
        parts = [p for p in inside.split("/") if p]
        resolved: list[str] = []
        for _ in range(40):  # ELOOP's limit
            if not parts:
                break
            part = parts.pop(0)
            candidate = root.joinpath(*resolved, part)
            if candidate.is_symlink():
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            if part == "..":
                resolved = resolved[:-1]
            elif part != ".":
                resolved.append(part)
        return root.joinpath(*resolved, *parts)
