"""Command line: ``python -m numbabn info | check``."""
import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m numbabn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, threads and available devices")
    commands.add_parser(
        "check", help="run every available backend against a float64 reference; exit 1 on failure"
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from . import _info

        return _info.main()
    if args.command == "check":
        from . import _selfcheck

        return _selfcheck.main()
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
