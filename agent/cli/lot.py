"""``driftgate lot approve|list|clear``: the lot an approved sample was made from."""

from __future__ import annotations

import argparse
import time

from agent.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_state_args, state_dir


def add_parser(sub: Subparsers) -> None:
    """The ``lot`` command and its verbs."""
    lot = sub.add_parser(
        "lot",
        help="mark the approved sample's lot per channel (approve, list, clear)",
        description="Every new lot is compared with the previous lot and with the approved "
        "one. Approving copies the lot's sample (its first readings on each channel) out of "
        "the local history, so it outlives the history. A running agent picks changes up "
        "within a second.",
    )
    verbs = lot.add_subparsers(dest="lot_command", required=True)
    approve = verbs.add_parser(
        "approve",
        help="this lot is the approved sample's: compare every new lot with it",
        description="Takes the lot's sample on each channel that has one (or only the "
        "channels named with --channel). With --sku the approval holds while the context of "
        "the channel's line or zone says sku=SKU; without, for every SKU.",
    )
    approve.add_argument("lot", help="e.g. LOT-2411-A")
    approve.add_argument(
        "--channel", action="append", default=[], help="only this channel (repeatable)"
    )
    approve.add_argument("--sku", default="", help="the SKU the approved sample is of")
    approve.add_argument("--note", default="", help="e.g. 'sample approval SKU 4711'")
    verbs.add_parser("list", help="the approved lots, and the lots with samples")
    clear = verbs.add_parser("clear", help="remove a channel's approved lot")
    clear.add_argument("--channel", required=True, help="channel name")
    clear.add_argument("--sku", default="", help="the approval of this SKU ('' : every SKU)")
    for p in (approve, verbs.choices["list"], clear):
        add_state_args(p)
    lot.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Dispatch ``driftgate lot ...``."""
    from agent.drift.approved import ApprovalError, ApprovedLot, ApprovedLots, approved_path
    from agent.report.data import lot_samples
    from agent.words import when

    directory = state_dir(args)
    store = ApprovedLots(approved_path(directory))
    verb = args.lot_command
    if verb == "approve":
        samples = [s for s in lot_samples(directory) if s.value == args.lot]
        if args.channel:
            have = {s.channel for s in samples}
            missing = [c for c in args.channel if c not in have]
            if missing:
                raise ApprovalError(
                    f"lot {args.lot} has no readings on {', '.join(missing)}"
                    + (f"; it has on {', '.join(sorted(have))}" if have else "")
                )
            samples = [s for s in samples if s.channel in args.channel]
        if not samples:
            known = sorted({s.value for s in lot_samples(directory)})
            raise ApprovalError(
                f"no readings of lot {args.lot!r} in {directory}; lots with readings: "
                + (", ".join(known) if known else "none yet")
            )
        now = time.time_ns()
        approved = [
            ApprovedLot(s.channel, s.value, s.values, s.first_ns, s.last_ns, now, args.sku,
                        args.note, s.meta)
            for s in samples
        ]  # fmt: skip
        store.put(approved)
        sku = f" for SKU {args.sku}" if args.sku else ""
        for a in approved:
            mean = sum(a.values) / len(a.values)
            unit = str(a.meta.get("unit", ""))
            print(f"{a.channel}: lot {a.lot} approved{sku}: {len(a.values)} readings, "
                  f"mean {mean:.4g} {unit}".rstrip())  # fmt: skip
        print("every new lot on these channels is compared with it (a running agent: within "
              "a second)")  # fmt: skip
        return EXIT_OK
    if verb == "list":
        if store.lots:
            print("approved lots:")
            for a in store:
                mean = sum(a.values) / len(a.values)
                sku = a.sku or "every SKU"
                note = f"  {a.note}" if a.note else ""
                unit = a.meta.get("unit", "")
                print(f"  {a.channel}  lot {a.lot}  ({sku})  n={len(a.values)}  mean {mean:.4g} "
                      f"{unit}  approved {when(a.approved_ns)}{note}")  # fmt: skip
        else:
            print("no approved lots yet: driftgate lot approve LOT")
        by_lot: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        for s in lot_samples(directory):
            by_lot.setdefault(s.value, []).append(s.channel)
            first[s.value] = min(first.get(s.value, s.first_ns), s.first_ns)
        if by_lot:
            print("lots with samples (first reading):")
            for name in sorted(by_lot, key=lambda v: first[v]):
                channels = by_lot[name]
                print(f"  {name}  {when(first[name])}  {len(channels)} channel"
                      f"{'s' if len(channels) != 1 else ''}")  # fmt: skip
        return EXIT_OK
    if store.remove(args.channel, args.sku):
        print(f"{args.channel}: approved lot cleared")
        return EXIT_OK
    sku = f" for SKU {args.sku}" if args.sku else ""
    print(f"{args.channel}: no approved lot{sku}")
    return EXIT_ERROR
