"""``driftgate reload``: ask the running agent to read its config again, and wait for its answer.

It is the unit's ``ExecReload=``: systemd passes the agent's ``$MAINPID`` and the unit's
``$RUNTIME_DIRECTORY``, where the agent writes its answer. So ``systemctl reload driftgate``
returns once the new config runs, or fails (non-zero, the problems in the journal) when the
agent refused it and kept the running one. The agent validates the file itself, where it can
read its systemd credentials (an ``ExecReload=`` command on systemd 252 cannot).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from agent.cli.common import EXIT_CONFIG, EXIT_ERROR, EXIT_OK, Subparsers

POLL_S = 0.05


def add_parser(sub: Subparsers) -> None:
    """The ``reload`` command."""
    reload = sub.add_parser(
        "reload",
        help="make the running agent apply its changed config (systemctl reload runs this)",
        description="Send SIGHUP to the agent and wait until it has applied or refused its "
        "config file (exit 0 or 2). By hand use `systemctl reload driftgate`, which runs this.",
    )
    reload.add_argument(
        "--pid", type=int, default=None, help="the agent's process (default: $MAINPID)"
    )
    reload.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="wait this long (default 60)"
    )
    reload.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Signal the agent, wait for its answer, print it."""
    from agent.runtime.reload import answer_path, read_answer

    pid = args.pid if args.pid is not None else int(os.environ.get("MAINPID", "0") or 0)
    if pid <= 0:
        print("driftgate reload: no agent process: give --pid, or use "
              "`systemctl reload driftgate`", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR
    path = answer_path()
    before = read_answer(path) if path is not None else None
    seen = before.generation if before is not None and before.pid == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"driftgate reload: cannot signal process {pid}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    if path is None:
        print(f"asked process {pid} to reload; its answer is in its log (no $RUNTIME_DIRECTORY "
              "to wait on)")  # fmt: skip
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        answer = read_answer(path)
        if answer is not None and answer.pid == pid and answer.generation > seen:
            if not answer.accepted:
                for problem in answer.problems:
                    print(problem, file=sys.stderr)
                print("configuration refused: the running one stays", file=sys.stderr)
                return EXIT_CONFIG
            print(f"configuration reloaded; applied: {', '.join(answer.applied) or 'nothing'}")
            if answer.needs_restart:
                print(f"not applied, need a restart: {', '.join(answer.needs_restart)}")
            return EXIT_OK
        time.sleep(POLL_S)
    print(f"driftgate reload: no answer from process {pid} within {args.timeout:g} s; see its "
          "log", file=sys.stderr)  # fmt: skip
    return EXIT_ERROR
