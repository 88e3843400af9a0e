"""Command line: ``python -m numbabn info | check | demo | bench``."""
import argparse
import sys


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m numbabn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, threads and available devices")
    commands.add_parser(
        "check", help="run every available backend against a float64 reference; exit 1 on failure"
    )
    demo = commands.add_parser(
        "demo", help="train a NumPy MLP on scikit-learn's digits with and without BatchNorm1d"
    )
    demo.add_argument("--out", default="numbabn-demo.png", help="where to save the loss plot (PNG)")
    demo.add_argument("--epochs", type=_positive_int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="3 epochs on a subset (smoke test)")
    bench = commands.add_parser(
        "bench", help="time numbabn against NumPy and PyTorch on this machine (about a minute)"
    )
    _bench_arguments(bench)
    return parser


def _bench_arguments(parser):
    from . import _bench  # imports only NumPy; numba and torch load when it runs

    _bench.build_parser(parser)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "info":
        from . import _info

        return _info.main()
    if args.command == "check":
        from . import _selfcheck

        return _selfcheck.main()
    if args.command == "demo":
        from . import _demo

        return _demo.main(out=args.out, epochs=args.epochs, seed=args.seed, quick=args.quick)
    if args.command == "bench":
        from . import _bench

        return _bench.main(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
