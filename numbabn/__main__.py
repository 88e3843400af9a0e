"""Command line: ``python -m numbabn info | check | demo | bench``."""
import argparse
import sys


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


#: ``demo <experiment>``: module under numbabn._experiments, default epochs.
EXPERIMENTS = {"small-batch": ("small_batch", 20), "rnn": ("rnn", 30)}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m numbabn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, threads and available devices")
    commands.add_parser(
        "check", help="run every available backend against a float64 reference; exit 1 on failure"
    )
    demo = commands.add_parser(
        "demo", help="train a NumPy MLP on scikit-learn's digits with and without BatchNorm1d; "
                     "'demo small-batch' and 'demo rnn' compare normalizations"
    )
    demo.add_argument(
        "experiment", nargs="?", choices=sorted(EXPERIMENTS),
        help="small-batch: the MLP at batch sizes 2 to 32 with each normalization; rnn: a "
             "recurrent network with layer norm or batch norm in its cell (default: the "
             "batch-norm demo)")
    demo.add_argument("--out", default=None,
                      help="where to save the plot (PNG; default numbabn-<experiment>.png)")
    demo.add_argument("--epochs", type=_positive_int, default=None,
                      help="default: 30 (demo), 20 (small-batch), 30 (rnn)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true",
                      help="a few epochs on a subset (smoke test)")
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
        return _run_demo(args)
    if args.command == "bench":
        from . import _bench

        return _bench.main(args)
    raise AssertionError(args.command)


def _run_demo(args):
    import importlib

    if args.experiment is None:
        from . import _demo

        return _demo.main(out=args.out or "numbabn-demo.png", epochs=args.epochs or 30,
                          seed=args.seed, quick=args.quick)
    module, epochs = EXPERIMENTS[args.experiment]
    experiment = importlib.import_module(f"numbabn._experiments.{module}")
    return experiment.main(out=args.out or f"numbabn-{args.experiment}.png",
                           epochs=args.epochs or epochs, seed=args.seed, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
