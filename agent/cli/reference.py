"""``driftgate reference capture|import|list|show|clear``: approved colour references."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.cli.common import EXIT_ERROR, EXIT_OK, Subparsers, add_state_args, state_dir
from agent.color.references import (
    Reference,
    ReferenceStore,
    check_name,
    load_reference_file,
)
from agent.words import when


def add_parser(sub: Subparsers) -> None:
    """The ``reference`` command and its verbs."""
    ref = sub.add_parser(
        "reference",
        help="approved colour references per SKU and part (capture, import, list, show, clear)",
        description="ΔE00 and metamerism are measured against these. A running agent picks "
        "changes up within a second.",
    )
    verbs = ref.add_subparsers(dest="reference_command", required=True)
    cap = verbs.add_parser(
        "capture", help="the NEXT measurement of this SKU and part becomes its reference"
    )
    cap.add_argument("--sku", required=True, help="e.g. 4711")
    cap.add_argument("--part", required=True, help="e.g. clasp")
    cap.add_argument("--note", default="", help="e.g. 'golden sample approved 2024-03-01'")
    cap.add_argument("--label", default="", help="how alerts name it, e.g. 'Clasp plating'")
    cap.add_argument("--affects", default="", help="consequence sentence quoted in alerts")
    imp = verbs.add_parser(
        "import", help="references from a YAML or CSV file (see docs/configure.md, Colour)"
    )
    imp.add_argument("file", type=Path, help="YAML or CSV of reference spectra or L*a*b*")
    verbs.add_parser("list", help="one line per reference and pending capture")
    show = verbs.add_parser("show", help="one reference in full, as JSON")
    clear = verbs.add_parser("clear", help="delete a reference (and a pending capture)")
    for p in (show, clear):
        p.add_argument("--sku", required=True, help="e.g. 4711")
        p.add_argument("--part", required=True, help="e.g. clasp")
    for p in (cap, imp, verbs.choices["list"], show, clear):
        add_state_args(p)
    ref.set_defaults(handler=run)


def describe(ref: Reference) -> str:
    """One line of ``reference list``."""
    captured = when(ref.captured_ns) if ref.captured_ns else "?"
    what = (
        f"spectrum {len(ref.spectrum)} values {ref.start_nm:g}-"
        f"{ref.start_nm + ref.step_nm * (len(ref.spectrum) - 1):g} nm"
        if ref.spectrum is not None
        else "L*a*b* "
        + ", ".join(f"{k} {v[0]:.2f} {v[1]:.2f} {v[2]:.2f}" for k, v in ref.lab.items())
    )
    note = f"  {ref.note}" if ref.note else ""
    return f"{ref.sku:<10} {ref.part:<12} {what}  ({ref.source}, {captured}){note}"


def run(args: argparse.Namespace) -> int:
    """Dispatch ``driftgate reference ...`` on ``state_dir/references``."""
    store = ReferenceStore(state_dir(args) / "references")
    command = args.reference_command
    if command == "capture":
        request = store.request_capture(
            args.sku, args.part, note=args.note, label=args.label, affects=args.affects
        )
        print(
            f"capture armed: the next measurement of SKU {request.sku} part {request.part} "
            f"becomes its reference (a running agent picks this up within a second)"
        )
        return EXIT_OK
    if command == "import":
        refs = load_reference_file(args.file)
        for ref in refs:
            store.put(ref)
        print(f"imported {len(refs)} reference{'s' if len(refs) != 1 else ''} from {args.file}")
        return EXIT_OK
    if command == "list":
        for problem in store.problems:
            print(f"unreadable: {problem}")
        for ref in store.all():
            print(describe(ref))
        for sku, part in sorted(store.requests):
            print(f"{sku:<10} {part:<12} capture armed: waiting for the next measurement")
        if not store.references and not store.requests:
            print("no references yet: driftgate reference capture --sku SKU --part PART")
        return EXIT_OK
    found = store.get(check_name("sku", args.sku), check_name("part", args.part))
    if command == "show":
        if found is None:
            print(f"no reference for SKU {args.sku} part {args.part}")
            return EXIT_ERROR
        print(json.dumps(found.to_json(), indent=2))
        return EXIT_OK
    if store.remove(args.sku, args.part):
        print(f"cleared the reference of SKU {args.sku} part {args.part}")
        return EXIT_OK
    print(f"no reference for SKU {args.sku} part {args.part}")
    return EXIT_ERROR
