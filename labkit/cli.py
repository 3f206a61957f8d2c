"""The ``labkit`` command (DESIGN §7).

    labkit run [NOTEBOOK ...] [--profile P] [--timeout S]   execute notebooks with papermill into runs/<P>/
    labkit report [--profile P]                             every recorded metric next to the paper's number
    labkit zoo build RECIPE [--profile P]                   build (or reuse) a mini-jungle zoo; prints its folder
    labkit zoo verify PATH                                  check every model file of a zoo against its sha256
    labkit zoo repair PATH                                  rebuild an unreadable or lost manifest from the models
    labkit student [--out DIR]                              student and instructor copies of every notebook
    labkit trees recover PATH [--regime ft|lora] [--lambda 0.3] [--trees K ...] [--reverse]
                                                            MoTHer on a folder of models; edges as JSON
    labkit export RECIPE --format model-j|lora-wise|lowra [--profile P] --out DIR
                                                            a zoo in a public benchmark's on-disk format
    labkit detune --lowra DIR --subset NAME [--n-loras N | --lora-ids I ...] [--layers I ...] [--end-rank R]
                  [--iters K] [--device D] [--seed S] --out DIR [--json FILE]
    labkit detune --checkpoints C1 C2 ... [--base BASE] [--rank R] [--iters K] [--device D] --out DIR [--json FILE]
                                                            Spectral DeTuning on LoWRA Bench or your own
                                                            fine-tunes; recovered weights + W-Error as JSON
    labkit dsire --lora-wise DIR --config NAME [--rank R] [--splits 10] [--n-train-sets 15] [--seed 42]
                 [--set-order FILE] [--json FILE]       DSiRe (lab 04) on a LoRA-WiSE config with the paper's
                                                            protocol; accuracy / MAE / MAPE vs the paper as JSON
    labkit probex --model-j DIR --subset NAME [--layer IDX|NAME] [--epochs 500] [--baselines] [--device D]
                  [--seed S] [--json FILE]                ProbeX (lab 02) on one layer of a Model-J subset with
                                                            the official protocol; accuracy vs the paper as JSON
    labkit probegen (--inr DIR [--split-json F] | --cnn-zoo DIR [--split-file F]) [--probes T] [--epochs E]
                    [--gen-depth D] [--method probegen|vanilla|synthetic] [--device D] [--seed S] [--json FILE]
                                                            ProbeGen (lab 03) on the MNIST/FMNIST INR zoos or
                                                            CIFAR10-GS; test accuracy / Kendall's tau as JSON
    labkit inspect PATH [--all] [--json]                    what a model file or folder holds: format, tensors,
                                                            shapes, dtypes, metadata, LoRA ranks (safe loaders only)
    labkit grade SUBMISSIONS_DIR [--profile smoke] [--out grades.csv] [--timeout 600]
                                                            run every submitted notebook (student code!) and write
                                                            one pass/fail row per student × exercise (CSV + markdown)

Errors are one line on stderr and a non-zero exit: 2 for a problem with the input or the arguments (the line
says what to fix), 1 when ``labkit run`` had notebooks fail, 3 for an internal error (a bug in labkit).
``labkit --debug COMMAND ...`` (or ``LABKIT_DEBUG=1``) prints the full traceback before that line, for input
errors too: the chain of exceptions, including the library error (a torch ``RuntimeError``, say) that labkit
turned into the one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from labkit.safe_io import printable, write_atomic

__all__ = ["main"]

# the parser's fixed choices, written out so `labkit --help` does not import torch (tests check that they match
# labkit.session.PROFILES, labkit.zoo.export.FORMATS and labkit.replicate.probegen.METHODS)
PROFILES = ("smoke", "workshop", "full")
EXPORT_FORMATS = ("model-j", "lora-wise", "lowra")
PROBEGEN_METHODS = ("probegen", "vanilla", "synthetic")


class UsageError(ValueError):
    """Bad command-line arguments (argparse's own checks); ``main`` prints it as one line, exit 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors become one ``UsageError`` line (no usage block, no ``SystemExit``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, f"{message} (see `{self.prog} --help`)")


def _profile_name(text: str) -> str:
    """``--profile``: the name as ``resolve_profile`` reads it (case and surrounding blanks ignored)."""
    return text.strip().lower()


def _positive_seconds(text: str) -> float:
    """``--timeout``: a positive, finite number of seconds (0 or a negative number would mean no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _cmd_run(args) -> int:
    from labkit.runner import find_notebooks, run_notebook
    from labkit.session import resolve_profile

    profile = resolve_profile(args.profile)
    notebooks = find_notebooks(args.notebooks)
    failed = []
    for nb in notebooks:
        print(f"labkit run: {printable(nb.stem)} (profile {profile}) …", flush=True)
        result = run_notebook(nb, profile, runs_root=Path(args.runs), timeout=args.timeout)
        if result.ok:
            print(f"labkit run: {printable(nb.stem)} done in {result.seconds:.1f} s → {printable(result.output)}",
                  flush=True)
        else:
            print(f"labkit run: {printable(result.error)} (executed copy: {printable(result.output)})",
                  file=sys.stderr, flush=True)
            failed.append(printable(nb.stem))
    if failed:
        print(f"labkit run: {len(failed)} of {len(notebooks)} notebooks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args) -> int:
    from labkit.report import write_report
    from labkit.session import resolve_profile

    out = write_report(Path(args.runs), resolve_profile(args.profile))
    print(f"report (markdown): {out.with_suffix('.md')}")
    print(out)
    return 0


def _cmd_zoo_build(args) -> int:
    from labkit import zoo
    from labkit.session import setup

    cfg = setup(args.profile, quiet=True, record=False)
    store = zoo.build(args.recipe, cfg)
    summary = store.summary()
    print(f"{args.recipe}: {len(store)} models ({summary.get('seconds', '?')} s to build)")
    print(store.root)
    return 0


def _cmd_zoo_verify(args) -> int:
    from labkit.zoo import ZooStore

    store = ZooStore(args.path)  # reads only; an unreadable manifest line is a one-line error (exit 2)
    problems = store.verify_all()
    for line in problems:
        print(printable(line), file=sys.stderr)
    print(f"{printable(store.root)}: {len(store)} models, {len(problems)} problems"
          f"{'' if store.complete else ' (build incomplete)'}")
    return 1 if problems else 0


def _cmd_zoo_repair(args) -> int:
    from labkit.zoo import ZooStore

    result = ZooStore.repair_manifest(args.path)
    recovered, lost = result["recovered"], result["unrecoverable"]
    if result["backup"]:
        print(f"the old manifest is kept as {printable(result['backup'])}")
    for name in lost:
        print(f"{printable(name)}: no row.json that matches its files (built by an older labkit, or damaged); left "
              "on disk, not listed", file=sys.stderr)
    dropped = f", unreadable lines {result['bad_lines']} dropped" if result["bad_lines"] else ""
    print(f"{printable(args.path)}: {result['kept']} rows kept, {len(recovered)} listed again from their row.json"
          f"{dropped}; nothing deleted")
    return 1 if lost else 0


def _cmd_student(args) -> int:
    from labkit.nbtools import write_copies
    from labkit.runner import default_notebooks

    notebooks = default_notebooks()
    if not notebooks:
        raise FileNotFoundError("no notebooks found (looked for notebooks/*.ipynb)")
    written = write_copies(notebooks, Path(args.out))
    print(f"wrote {len(written) // 2} student and {len(written) // 2} instructor notebooks")
    print(Path(args.out).resolve())
    return 0


def _cmd_trees_recover(args) -> int:
    from labkit.replicate.trees import recover_folder

    result = recover_folder(args.path, regime=args.regime, lam=args.lam, trees=args.trees, reverse=args.reverse,
                            ft_variant=args.ft_variant)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_export(args) -> int:
    from labkit import zoo
    from labkit.session import setup
    from labkit.zoo.export import describe, export

    cfg = setup(args.profile, quiet=True, record=False)
    store = zoo.build(args.recipe, cfg)
    kwargs = {"n_loras": args.n_loras} if args.n_loras is not None else {}
    if kwargs and args.format != "lowra":
        raise ValueError("--n-loras applies to --format lowra only")
    print(describe(export(store, args.format, args.out, **kwargs)))
    print(Path(args.out).resolve())
    return 0


def _cmd_inspect(args) -> int:
    from labkit.datasets.inspection import format_report, inspect_path

    info = inspect_path(args.path)
    print(json.dumps(info, indent=1, default=str) if args.json else format_report(info, None if args.all else 40))
    return 1 if info["problems"] else 0


def _cmd_grade(args) -> int:
    from labkit.grading import grade, grade_paths, write_grades
    from labkit.session import resolve_profile

    grade_paths(args.out)  # a bad --out fails before any notebook runs
    profile = resolve_profile(args.profile or "smoke")
    rows = grade(Path(args.submissions), profile, args.timeout,
                 progress=lambda line: print(f"labkit grade: {line}", file=sys.stderr, flush=True))
    csv_path, md_path, markdown = write_grades(rows, args.out, profile)
    print(markdown, end="")
    print(f"labkit grade: wrote {printable(csv_path)} and {printable(md_path)}", file=sys.stderr)
    return 0


def _non_finite(value, where: str = "") -> tuple[str, float] | None:
    """``(path, number)`` of the first NaN or infinite number in ``value`` (path as ``dsire.mae_mean`` or
    ``layers[3].final_loss``); None if every number is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def _emit(result: dict, json_file: str | None) -> None:
    """A replication command's result: JSON on stdout, or into ``--json FILE``; a NaN or infinite number in it
    is refused (one line naming the field) rather than reported as a result."""
    bad = _non_finite(result)
    if bad:
        raise ValueError(f"the result's {printable(bad[0])} is {bad[1]}, not a number; the run diverged or its input "
                         "holds NaN/inf, so there is no result to report")
    text = json.dumps(result, indent=1, allow_nan=False)
    if json_file:
        write_atomic(Path(json_file), text + "\n")
    else:
        print(text)


def _cmd_detune(args) -> int:
    from labkit.replicate.detune import detune_checkpoints, detune_lowra

    if args.lowra is not None:
        if args.subset is None:
            raise ValueError("--lowra needs --subset (vit, stable-diffusion-1.5, mistral-7b-v0.1-sft, "
                             "mistral-7b-v0.1-dpo, or an exported one)")
        if args.base is not None:
            raise ValueError("--base applies to --checkpoints; LoWRA Bench holds its own pre-fine-tuning weights")
        result = detune_lowra(args.lowra, args.subset, args.out, n_loras=args.n_loras, lora_ids=args.lora_ids,
                              layers=args.layers, end_rank=args.end_rank, n_iters=args.iters, device=args.device,
                              seed=args.seed)
    else:
        extra = [flag for flag, value in (("--subset", args.subset), ("--n-loras", args.n_loras),
                                          ("--lora-ids", args.lora_ids), ("--layers", args.layers)) if value is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} apply to --lowra only")
        result = detune_checkpoints(args.checkpoints, args.out, base=args.base, rank=args.end_rank,
                                    n_iters=args.iters or 300, device=args.device, seed=args.seed)
    _emit(result, args.json)
    if result.get("w_error") is not None:
        print(f"labkit detune: W-Error {result['w_error']:.2f} (Mean-LoRA {result['mean_lora_w_error']:.2f}) over "
              f"{result['n_layers']} layers in {result['seconds']['total']:.1f} s → {args.out}", file=sys.stderr)
    else:
        print(f"labkit detune: recovered {result['n_layers']} layers in {result['seconds']['total']:.1f} s → "
              f"{args.out}", file=sys.stderr)
    return 0


def _cmd_dsire(args) -> int:
    from labkit.replicate.dsire import dsire_lora_wise, read_set_order

    set_order = read_set_order(args.set_order) if args.set_order else None
    result = dsire_lora_wise(args.lora_wise, args.config, rank=args.rank, repeats=args.splits,
                             n_train_sets=args.n_train_sets, seed=args.seed, set_order=set_order,
                             set_order_file=args.set_order)
    _emit(result, args.json)
    d, f = result["dsire"], result["frobenius_nn"]
    print(f"labkit dsire: {args.config}: accuracy {d['accuracy_mean']:.2f} ± {d['accuracy_std']:.2f} %, MAE "
          f"{d['mae_mean']:.2f} ± {d['mae_std']:.2f} (Frobenius-NN MAE {f['mae_mean']:.2f}) over "
          f"{result['repeats']} splits of {result['n_models']} models, {result['n_layers']} layers, in "
          f"{result['seconds']['total']:.1f} s", file=sys.stderr)
    return 0


def _cmd_probex(args) -> int:
    from labkit.replicate.probex import probex_model_j

    result = probex_model_j(args.model_j, args.subset, args.layer, epochs=args.epochs, eval_every=args.eval_every,
                            rep_dim=args.rep_dim, baselines=args.baselines, device=args.device, seed=args.seed)
    _emit(result, args.json)
    extra = "".join(f", {k} {v['test_accuracy']:.2f} %" for k, v in (result["baselines"] or {}).items())
    paper = f" (paper {result['paper']['probex']:.2f} % at layer {result['paper']['layer']})" if result["paper"] else ""
    print(f"labkit probex: {args.subset} layer {result['layer']} ({result['layer_name']}): ProbeX test accuracy "
          f"{result['probex']['test_accuracy']:.2f} %{paper}{extra} over {result['n_models']} models in "
          f"{result['seconds']['total']:.1f} s", file=sys.stderr)
    return 0


def _cmd_probegen(args) -> int:
    from labkit.replicate.probegen import probegen_cifar10_gs, probegen_inr

    kwargs = {"method": args.method, "n_probes": args.probes, "epochs": args.epochs, "gen_depth": args.gen_depth,
              "device": args.device, "seed": args.seed}
    if args.inr is not None:
        if args.split_file is not None:
            raise ValueError("--split-file applies to --cnn-zoo; an INR zoo takes --split-json")
        result = probegen_inr(args.inr, args.split_json, **kwargs)
    else:
        if args.split_json is not None:
            raise ValueError("--split-json applies to --inr; CIFAR10-GS takes --split-file")
        result = probegen_cifar10_gs(args.cnn_zoo, args.split_file, **kwargs)
    _emit(result, args.json)
    ref = ", ".join(f"{k} {v:g}" for k, v in (result["reference"] or {}).items())
    n = result["n_networks"]
    print(f"labkit probegen: {result['dataset']} {result['method']} ({result['n_probes']} probes): "
          f"{result['metric']} {result['test']:.3f}" + (f" (spec baselines: {ref}; ProbeGen's own number is not "
                                                        "in the spec)" if ref else "") +
          f" over {n['train']}/{n['val']}/{n['test']} train/val/test networks in {result['seconds']['total']:.1f} s",
          file=sys.stderr)
    return 0


def _add_profile(parser: argparse.ArgumentParser, help: str) -> None:
    """``--profile smoke|workshop|full`` (``$LABKIT_PROFILE``, when set, still wins: ``resolve_profile``)."""
    parser.add_argument("--profile", type=_profile_name, choices=PROFILES, default=None, help=help)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="labkit", description="labkit: a lab kit on learning from model weights")
    p.add_argument("--debug", action="store_true", help="on an error, print the full traceback (the chain of "
                                                        "exceptions) before the one-line message")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks with papermill into runs/<profile>/")
    run.add_argument("notebooks", nargs="*", help="paths, names (04_dsire) or lab numbers (04); default: all")
    _add_profile(run, "default: $LABKIT_PROFILE or workshop")
    run.add_argument("--timeout", type=_positive_seconds, default=None,
                     help="per-cell timeout in seconds (a positive number; default: none)")
    run.add_argument("--runs", default="runs", help="output folder (default: runs)")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="write runs/<profile>/report.md and report.html")
    _add_profile(rep, "default: $LABKIT_PROFILE or workshop")
    rep.add_argument("--runs", default="runs")
    rep.set_defaults(func=_cmd_report)

    zoo = sub.add_parser("zoo", help="build or check model zoos").add_subparsers(dest="zoo_command", required=True)
    zb = zoo.add_parser("build", help="build (or reuse) a zoo; prints its folder last")
    zb.add_argument("recipe")
    _add_profile(zb, "default: $LABKIT_PROFILE or workshop")
    zb.set_defaults(func=_cmd_zoo_build)
    zv = zoo.add_parser("verify", help="check a zoo's files against the manifest")
    zv.add_argument("path")
    zv.set_defaults(func=_cmd_zoo_verify)
    zr = zoo.add_parser("repair", help="rebuild a zoo's unreadable or lost manifest from its model folders "
                                       "(keeps the old one; deletes nothing)")
    zr.add_argument("path")
    zr.set_defaults(func=_cmd_zoo_repair)

    st = sub.add_parser("student", help="write student and instructor copies of every notebook")
    st.add_argument("--out", default="notebooks", help="writes OUT/student/ and OUT/instructor/ (default: notebooks)")
    st.set_defaults(func=_cmd_student)

    trees = sub.add_parser("trees", help="Model Trees (lab 01)").add_subparsers(dest="trees_command", required=True)
    tr = trees.add_parser("recover", help="recover the Model Tree(s) of a folder of models with MoTHer; "
                                          "prints the edges as JSON")
    tr.add_argument("path", help="a zoo folder (zoo.json + manifest.jsonl) or a folder of *.safetensors files "
                                 "and peft adapter folders whose base model is in the folder")
    tr.add_argument("--regime", choices=["ft", "lora"], default="ft",
                    help="ft: max-difference distance (full fine-tunes, default); lora: rank of the difference")
    tr.add_argument("--lambda", dest="lam", type=float, default=0.3, help="weight λ of the kurtosis direction "
                                                                           "term (default 0.3; 0 = distance only)")
    tr.add_argument("--trees", type=int, nargs="+", default=None,
                    help="number of trees, one value per architecture in the folder (default: 1 each)")
    tr.add_argument("--reverse", action="store_true",
                    help="children are MORE kurtotic than parents (continued pre-training; also the digit-trees zoo)")
    tr.add_argument("--ft-variant", choices=["normalised", "max_abs"], default="normalised",
                    help="ft distance: the official code's min-max normalised max (default) or the paper's max |Δ|")
    tr.set_defaults(func=_cmd_trees_recover)

    ex = sub.add_parser("export", help="write a mini-jungle zoo in a public benchmark's format "
                                       "(Model-J, LoRA-WiSE, LoWRA Bench)")
    ex.add_argument("recipe", help="digit-trees (model-j), digit-diffusion (lora-wise, lowra), minilm-lora (lowra)")
    ex.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    _add_profile(ex, "zoo profile (builds the zoo first if needed)")
    ex.add_argument("--out", required=True, help="folder to write into (configs already there are kept)")
    ex.add_argument("--n-loras", type=int, default=None, help="lowra: keep the first N LoRAs (15 = the "
                                                               "benchmark's exact 80 columns; default all)")
    ex.set_defaults(func=_cmd_export)

    dt = sub.add_parser("detune", help="Spectral DeTuning (lab 05) on LoWRA Bench or on your own fine-tuned "
                                       "checkpoints; prints the result as JSON")
    src = dt.add_mutually_exclusive_group(required=True)
    src.add_argument("--lowra", metavar="DIR", help="a LoWRA Bench folder (<subset>/train-*.parquet)")
    src.add_argument("--checkpoints", metavar="C", nargs="+", help="2+ fine-tunes of one base: safetensors files "
                                                                   "(LoRAs merged) or peft adapter folders")
    dt.add_argument("--subset", help="LoWRA subset: vit, stable-diffusion-1.5, mistral-7b-v0.1-sft, "
                                     "mistral-7b-v0.1-dpo (or an exported one)")
    pick = dt.add_mutually_exclusive_group()
    pick.add_argument("--n-loras", type=int, default=None,
                      help="how many LoRAs, drawn as the official code does (seeded random.sample); default per "
                           "subset: 5 (vit, sd), 12 (sft), 8 (dpo)")
    pick.add_argument("--lora-ids", type=int, nargs="+", default=None, help="exactly these LoRAs (e.g. 13 6 12 14 0)")
    dt.add_argument("--layers", type=int, nargs="+", default=None, help="layer (row) indices; default all")
    dt.add_argument("--end-rank", "--rank", dest="end_rank", type=int, default=None,
                    help="the scheduler's end rank (≥ the LoRA rank); default per subset: 16 (vit), 32 (sd), "
                         "64 (mistral); checkpoints: the largest adapter rank, else 16")
    dt.add_argument("--iters", type=int, default=None, help="iterations; default 300 (1000 for mistral)")
    dt.add_argument("--base", help="--checkpoints: the pre-fine-tuning model (safetensors file or folder with "
                                   "model.safetensors); adapters are merged onto it and W-Error is reported against it")
    dt.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    dt.add_argument("--seed", type=int, default=0, help="seed of the LoRA choice and the randomized SVDs (default 0)")
    dt.add_argument("--out", required=True, help="folder for recovered*.safetensors and result.json")
    dt.add_argument("--json", metavar="FILE", help="write the JSON result here instead of stdout")
    dt.set_defaults(func=_cmd_detune)

    ds = sub.add_parser("dsire", help="DSiRe (lab 04) on a LoRA-WiSE config with the paper's protocol; prints "
                                      "accuracy / MAE / MAPE and the Frobenius-NN baseline as JSON")
    ds.add_argument("--lora-wise", required=True, metavar="DIR", help="a LoRA-WiSE folder (the Hub download: "
                                                                      "README.md + low/16/train-*.parquet …)")
    ds.add_argument("--config", required=True, help="low_8, low_16, low_32, medium_16, medium_32, medium_32_2, "
                                                    "high_32 (or an exported one)")
    ds.add_argument("--rank", type=int, default=None, help="LoRA rank (default: from the config name, low_16 → 16)")
    ds.add_argument("--splits", type=int, default=10, help="random splits (default 10)")
    ds.add_argument("--n-train-sets", type=int, default=15, help="personalisation sets that train (default 15)")
    ds.add_argument("--seed", type=int, default=42, help="seed of the splits (default 42)")
    ds.add_argument("--set-order", metavar="FILE", help="set names, one a line: split index i is line i "
                                                        "(default: the names sorted)")
    ds.add_argument("--json", metavar="FILE", help="write the JSON result here instead of stdout")
    ds.set_defaults(func=_cmd_dsire)

    pr = sub.add_parser("probex", help="ProbeX (lab 02) on one layer of a discriminative Model-J subset with the "
                                       "official protocol; prints accuracy vs the paper as JSON")
    pr.add_argument("--model-j", required=True, metavar="DIR", help="a Model-J folder (the download: "
                                                                    "<subset>/train/models--ProbeX--… …)")
    pr.add_argument("--subset", required=True, help="SupViT, DINO, MAE, ResNet (or an exported one)")
    pr.add_argument("--layer", default=None, help="index into ProbeX's sorted layer list, or a layer name "
                                                  "(default: the official best: 59; 64 for MAE)")
    pr.add_argument("--epochs", type=int, default=500, help="training epochs (default 500)")
    pr.add_argument("--eval-every", type=int, default=25, help="validation every N epochs from epoch 0 (default 25)")
    pr.add_argument("--rep-dim", type=int, default=128, help="r_T (default 128, the official sbatch value; the "
                                                             "argparse default is 512)")
    pr.add_argument("--baselines", action="store_true", help="also train the dense linear expert and StatNN")
    pr.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the init and batch order (default 0)")
    pr.add_argument("--json", metavar="FILE", help="write the JSON result here instead of stdout")
    pr.set_defaults(func=_cmd_probex)

    pg = sub.add_parser("probegen", help="ProbeGen (lab 03) on an MNIST/FMNIST INR zoo or CIFAR10-GS with the "
                                         "released scripts' settings; prints the test metric as JSON")
    pg_src = pg.add_mutually_exclusive_group(required=True)
    pg_src.add_argument("--inr", metavar="DIR", help="an INR zoo folder (fmnist_inrs or mnist-inrs from DWSNets)")
    pg_src.add_argument("--cnn-zoo", metavar="DIR", help="a CIFAR10-GS folder (weights.npy, metrics.csv.gz, "
                                                         "layout.csv)")
    pg.add_argument("--split-json", metavar="F", help="--inr: the Neural-Graphs split JSON (default: "
                                                      "<prefix>_splits.json next to DIR)")
    pg.add_argument("--split-file", metavar="F", help="--cnn-zoo: NFN's split CSV (default: nfn_cifar10_split.csv "
                                                      "or cifar10_split.csv in DIR)")
    pg.add_argument("--probes", type=int, default=None, help="number of probes T (default 128; the paper also "
                                                             "runs 64)")
    pg.add_argument("--epochs", type=int, default=None, help="epochs (default 30 for INRs, 150 for CIFAR10-GS)")
    pg.add_argument("--gen-depth", type=int, default=None, help="generator depth for --method probegen (default 2 "
                                                                "for INRs; 6 for CIFAR10-GS, which allows 5 or 6)")
    pg.add_argument("--method", default="probegen", choices=PROBEGEN_METHODS,
                    help="probegen (default), vanilla (free probes) or synthetic (fixed uniform coordinates / dead "
                         "leaves, head only)")
    pg.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    pg.add_argument("--seed", type=int, default=1, help="seed of the init, batch order and synthetic probes "
                                                        "(default 1, as the scripts)")
    pg.add_argument("--json", metavar="FILE", help="write the JSON result here instead of stdout")
    pg.set_defaults(func=_cmd_probegen)

    ins = sub.add_parser("inspect", help="what a model file or folder holds (safetensors, peft adapter, zoo, "
                                         "LoWRA/LoRA-WiSE parquet, Model-J, torch checkpoints, VTHR pickles)")
    ins.add_argument("path")
    ins.add_argument("--all", action="store_true", help="list every tensor (default: the first 40)")
    ins.add_argument("--json", action="store_true", help="print the description as JSON")
    ins.set_defaults(func=_cmd_inspect)

    gr = sub.add_parser(
        "grade", help="run every submitted notebook of a folder and write one row per student × exercise "
                      "(pass / fail / not attempted / not run / error) as CSV and markdown",
        description="Grade submitted notebooks. WARNING: this EXECUTES THE SUBMISSIONS' CODE, arbitrary code, as "
                    "you, with your files and network; grade only where running students' code is acceptable (a "
                    "container or a throwaway account). Each *.ipynb under SUBMISSIONS_DIR (searched recursively; "
                    "hidden folders and .ipynb_checkpoints skipped) runs with papermill in its own temporary folder; "
                    "the submitted files are never written to. The student is the folder directly under "
                    "SUBMISSIONS_DIR (alice/00_start_here.ipynb -> alice), or the file name for a notebook directly "
                    "in it (bob.ipynb -> bob). Rows list every exercise of the notebook's lab (from its file name, "
                    "else its labkit.setup(lab=...), else the exercises it checks). A notebook that raises, crashes "
                    "its kernel or runs past --timeout becomes 'error' rows and grading goes on; the exit status "
                    "is 0 once every notebook has its rows, 2 for bad input.")
    gr.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="folder of submitted notebooks")
    _add_profile(gr, "profile the notebooks run in (default: $LABKIT_PROFILE or smoke; exercise checks are the "
                     "same in every profile)")
    gr.add_argument("--out", default="grades.csv", help="CSV file to write (default: grades.csv here); the "
                                                        "markdown table goes next to it as .md")
    gr.add_argument("--timeout", type=_positive_seconds, default=600.0,
                    help="seconds one notebook may run, kernel start included (default 600); past it the run is "
                         "stopped and its exercises are graded 'error'")
    gr.set_defaults(func=_cmd_grade)
    return p


def _say(command: str, message: object) -> None:
    """One line on stderr: control characters and newlines escaped, so nothing a file name holds reaches the
    terminal raw and the error never spreads over several lines."""
    print(f"labkit {command}: {printable(message)}", file=sys.stderr, flush=True)


def _debugging(args: argparse.Namespace) -> bool:
    """``--debug`` or ``LABKIT_DEBUG`` set to anything but empty or 0."""
    return args.debug or os.environ.get("LABKIT_DEBUG", "").strip() not in ("", "0")


def _print_traceback(e: BaseException) -> None:
    """``e``'s full traceback on stderr, with the exceptions it was raised from or while handling — also those
    hidden by ``raise ... from None`` (the library error, e.g. torch's RuntimeError, behind a one-line message).
    Each line is escaped like the one-line messages, so file names cannot drive the terminal."""
    seen: set[int] = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    for line in "".join(traceback.format_exception(e)).splitlines():
        print(printable(line), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one ``labkit`` command; returns the exit status (errors: one line on stderr, see the module doc)."""
    try:
        args = _parser().parse_args(argv)
    except UsageError as e:
        print(f"{printable(e.prog)}: {printable(e)}", file=sys.stderr, flush=True)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, OSError) as e:
        if _debugging(args):
            _print_traceback(e)
        _say(args.command, e.args[0] if isinstance(e, KeyError) and e.args else e)
        return 2
    except Exception as e:  # the last safety net: a bug, still one line (--debug: the traceback before it)
        if _debugging(args):
            _print_traceback(e)
        _say(args.command, f"internal error: {type(e).__name__}: {e} — this is a bug in labkit; run "
                           "`labkit --debug ...` to see the traceback")
        return 3


if __name__ == "__main__":
    sys.exit(main())
