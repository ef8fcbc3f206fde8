"""``driftgate users add|pin|remove|list``: who may act on the status page (acknowledge an
incident, capture a baseline). Reading the page needs no login."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from agent.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_state_args


def add_parser(sub: Subparsers) -> None:
    """The ``users`` command and its verbs."""
    users = sub.add_parser(
        "users",
        help="logins of the status page: add a person, set a line's PIN, remove, list",
        description="Logins live in the status page's users file (status.users_file, default "
        "<state_dir>/status-users) as scrypt hashes, never as passwords. A running agent reads "
        "the file again when it changes: no restart.",
    )
    verbs = users.add_subparsers(dest="users_command", required=True)
    add = verbs.add_parser("add", help="add a person (or set a new password)")
    add.add_argument("name", help="the login, e.g. marie (letters, digits, . _ -)")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin, not a prompt"
    )
    pin = verbs.add_parser(
        "pin",
        help="set the shared PIN of a line (it acts on that line's channels only)",
        description="Whoever logs in with a line's PIN gives their own name too; the audit log "
        "and acknowledgements carry it, e.g. 'Luca (line L2 PIN)'.",
    )
    pin.add_argument("line", help="the line, as its channels' line tag says, e.g. L2")
    pin.add_argument("--pin-stdin", action="store_true", help="read the PIN from stdin")
    remove = verbs.add_parser("remove", help="remove a person, or a line's PIN (@LINE)")
    remove.add_argument("name", help="a login, or @L2 for line L2's PIN")
    verbs.add_parser("list", help="the logins and the lines that have a PIN (never a hash)")
    for p in (add, pin, remove, verbs.choices["list"]):
        add_state_args(p)
        p.add_argument("--users-file", type=Path, help="the users file (default: the config's)")
    users.set_defaults(handler=run)


def users_file(args: argparse.Namespace) -> Path:
    """--users-file, else the config's status.users_file, else <state_dir>/status-users."""
    if args.users_file is not None:
        return Path(args.users_file)
    if args.state_dir is None and args.config is not None:
        from agent.config import load_config

        cfg = load_config(args.config)
        return cfg.status.users_file or cfg.state_dir / "status-users"
    from agent.cli.common import state_dir

    return state_dir(args) / "status-users"


def _secret(what: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"{what}: ")
    if getpass.getpass(f"{what} again: ") != first:
        from agent.web.auth import UsersError

        raise UsersError(f"the two {what}s differ: nothing changed")
    return first


def run(args: argparse.Namespace) -> int:
    """Dispatch ``driftgate users ...``."""
    from agent.web.auth import UsersFile

    path = users_file(args)
    users = UsersFile(path)
    verb = args.users_command
    if verb == "list":
        logins = users.logins()
        for problem in users.problems:
            print(f"skipped: {problem}", file=sys.stderr)
        people = sorted(a for a, x in logins.items() if x.line is None)
        lines = sorted(x.line for x in logins.values() if x.line is not None)
        print(f"{path}: {len(people)} people, {len(lines)} line PINs")
        for name in people:
            print(f"  {name}")
        for line in lines:
            print(f"  @{line} (PIN of line {line})")
        return EXIT_OK
    if verb == "remove":
        if not users.remove(args.name):
            print(f"driftgate: no login {args.name!r} in {path}", file=sys.stderr)
            return EXIT_ERROR
        print(f"{args.name}: removed from {path}; sessions it has open end within "
              "status.session or at the agent's next restart")  # fmt: skip
        return EXIT_OK
    if verb == "add":
        new = users.put(args.name, _secret("password", args.password_stdin))
        print(f"{args.name}: {'added to' if new else 'password changed in'} {path}")
        return EXIT_OK
    new = users.put(f"@{args.line}", _secret("PIN", args.pin_stdin))
    print(f"line {args.line}: PIN {'set' if new else 'changed'} in {path}")
    return EXIT_OK
