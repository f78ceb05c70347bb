"""List the hardware profiles, show one, or compare them per model preset.

  moe-cache-env profiles                    list the shipped profiles
  moe-cache-env profiles show NAME [--json] one profile in detail (NAME or a path to a profile file)
  moe-cache-env profiles --compare          per model preset: one expert's host-to-GPU time, its compute
                                            time at 1 token and their ratio, under every shipped profile
"""

from __future__ import annotations

import argparse
import json

from moe_cache_env.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show")
    parser.add_argument("name", nargs="?", help="profile name or path (for show)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--compare", action="store_true", help="compare the shipped profiles per model preset")


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.profiles.profile import list_profiles, load_profile
    from moe_cache_env.profiles.report import compare_rows, format_calibration, format_compare, format_list, list_rows

    if args.action == "show":
        if not args.name:
            raise CommandError(f"show needs a profile name; shipped profiles: {', '.join(list_profiles())}")
        if args.compare:
            raise CommandError("--compare compares all shipped profiles; use it without show")
        profile = load_profile(args.name)
        data = profile.to_dict()
        print(json.dumps(data, indent=2, sort_keys=True) if args.json else format_calibration(data))
        return 0
    if args.name:
        raise CommandError(f"unexpected argument {args.name!r}; did you mean 'profiles show {args.name}'?")
    profiles = [load_profile(n) for n in list_profiles()]
    if args.compare:
        print(json.dumps(compare_rows(profiles), indent=2) if args.json else format_compare(profiles))
    else:
        print(json.dumps(list_rows(profiles), indent=2) if args.json else format_list(profiles))
    return 0
