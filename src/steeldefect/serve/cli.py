"""The `steeldefect` command.

    steeldefect predict IMAGES_OR_FOLDERS... --model-dir models --output predictions.csv [--threshold X]
                        [--class-threshold X] [--engine keras|openvino] [--maps DIR]
    steeldefect cache info | clear [--kind features|images|selfcheck|pretrain]
    steeldefect preset demo|scratch|imagenet [-S key=value ...] [more dvc exp run arguments]

predicts with the exported model only (model.json + model.weights.h5, loaded in Keras safe mode, or the OpenVINO
IR in openvino/, the default when it exists; the image size from model_meta.json), through the same tf.data
preprocessing and prediction code as the predict stage, and writes one CSV row per image: path, probability,
predicted (0 clean / 1 defect), engine (keras or openvino), precision (fp32 or int8), error. A model with defect
types (train.target classes) adds p_<name> per type and classes (the types at or above their thresholds, joined by
";") after predicted; without a defect probability (trained on no clean images) probability and predicted are
absent. A mask-supervised model (one with a defect map) adds defect_area_share and box_x0, box_y0, box_x1, box_y1
(the defect's bounding box in the original image's pixels) after those, and `--maps DIR` writes each image with its
map overlaid. An unreadable image gets its error text instead of a probability and does not stop the run. The IR is
first checked on this CPU against Keras (serve/selfcheck.py). Exit codes: see EXIT_CODES (the same for the stages).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from steeldefect.errors import UserError, run

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is expanded to
DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 16  # when model_meta.json does not record the predict stage's batch size
EXIT_CODES = """exit codes:
  0    everything done
  1    some images could not be read (predict: their rows hold the error)
  2    usage, param or data error (bad arguments, no model, no images): the message says what to fix
  3    unexpected error: a bug; rerun with STEELDEFECT_DEBUG=1 for the traceback
  130  interrupted (Ctrl-C)
`preset` exits with the code of the `dvc exp run` it starts."""


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steeldefect",
        description="Steel-defect classifier commands.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(commands)
    cache = commands.add_parser(
        "cache",
        help="show or free the caches (features, images, OpenVINO self-check passes)",
        description="The caches shared by every run and experiment (frozen-backbone features, decoded images, "
        "the OpenVINO IR's self-check passes per CPU) "
        "live in $STEELDEFECT_CACHE_DIR, else $XDG_CACHE_HOME/steeldefect, else ~/.cache/steeldefect.",
    )
    cache.add_argument("action", choices=["info", "clear"], help="info: entries and size per kind; clear: delete")
    cache.add_argument(
        "--kind", choices=["features", "images", "selfcheck", "pretrain"], help="clear only this kind (default: all)"
    )
    preset = commands.add_parser(
        "preset",
        help="run a DVC experiment with a preset of conf/preset/ (dvc exp run -S ...)",
        description="Run `dvc exp run` with one -S per key of conf/preset/NAME.yaml, then the arguments given (a later "
        "-S wins), after checking the resulting params. Run it in the project root.",
    )
    preset.add_argument("name", help="demo, scratch or imagenet (conf/preset/NAME.yaml)")
    preset.add_argument(
        "dvc_args",
        nargs=argparse.REMAINDER,
        metavar="DVC_EXP_RUN_ARGS",
        help="more `dvc exp run` arguments, e.g. -S data.source=/path/to/images --queue -n NAME",
    )
    return parser


def _add_predict(commands) -> None:
    """The `predict` subcommand and its options."""
    predict = commands.add_parser(
        "predict",
        help="defect probability of images with the exported model",
        description="Predict the defect probability of images (files, or folders of .jpg/.jpeg/.png files) with "
        "the exported model and write one CSV row per image: path, probability, predicted (1 = defect), engine, "
        "precision, error. A model with defect types adds p_<name> per type and classes (the types whose probability "
        "reaches their threshold, joined by ';'); one trained with no clean images has no probability and predicted. "
        "A mask-supervised model also gives defect_area_share and the defect's bounding box box_x0, box_y0, "
        "box_x1, box_y1 in the image's own pixels (x1, y1 exclusive; empty when no map cell reaches the map "
        "threshold). Exit code 1 when some images could not be read (their rows hold the error), 2 for usage errors, "
        "3 for an unexpected error (a bug).",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    predict.add_argument(
        "--model-dir",
        type=Path,
        default=Path("models"),
        help="folder holding model.json, model.weights.h5 and model_meta.json (default: models)",
    )
    predict.add_argument(
        "--output", type=Path, default=Path("predictions.csv"), help="CSV to write (default: predictions.csv)"
    )
    _add_thresholds(predict)
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per batch (default: the predict stage's, recorded in model_meta.json)",
    )
    predict.add_argument(
        "--map-threshold",
        type=_threshold,
        default=None,
        help="mask models: a map cell counts as defect when its value >= this (default: the evaluate stage's "
        f"evaluate.map_threshold in MODEL_DIR/threshold.json if present, else {DEFAULT_THRESHOLD})",
    )
    predict.add_argument(
        "--maps",
        type=Path,
        default=None,
        metavar="DIR",
        help="mask models: write one PNG per image into DIR (<image stem>_map.png): the image tinted red by its "
        "defect map, the cells >= the map threshold outlined in yellow",
    )
    predict.add_argument(
        "--engine",
        choices=("keras", "openvino"),
        default=None,
        help="keras (model.json + weights) or openvino (the IR in MODEL_DIR/openvino/, fast on CPUs, checked "
        "against Keras on its reference images the first time it runs on a CPU); default: openvino when that IR "
        "exists, else keras",
    )
    predict.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def _add_thresholds(parser) -> None:
    """The decision thresholds of `predict`: the defect probability's and the defect types'."""
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="predicted = 1 when probability >= threshold (default: the evaluate stage's choice in "
        f"MODEL_DIR/threshold.json if present, else {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--class-threshold",
        type=_threshold,
        default=None,
        help="models with defect types: a type is listed in `classes` when its probability >= this, for every type "
        "(default: the evaluate stage's class_thresholds in MODEL_DIR/threshold.json if present, else "
        f"{DEFAULT_THRESHOLD} for each type)",
    )


def cache_command(action: str, kind: str | None) -> None:
    """`steeldefect cache info` / `steeldefect cache clear [--kind features|images|selfcheck|pretrain]`."""
    from steeldefect.train import cache

    root = cache.default_root()
    if action == "clear":
        freed = cache.clear(root, (kind,) if kind else cache.KINDS)
        print(f"cleared {kind or ', '.join(cache.KINDS)} in {root}: {freed / 2**20:.1f} MiB freed")
        return
    print(f"cache folder: {root}")
    for name, stats in cache.info(root).items():
        print(f"  {name:<9} {stats['entries']:>5} entries  {stats['bytes'] / 2**20:>10.1f} MiB")


def expand_images(inputs: Sequence[str | Path]) -> list[str]:
    """Files as given (existing or not: a missing one gets an error row), folders expanded to their .jpg,
    .jpeg and .png files (any case, not recursive), sorted by name."""
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                print(f"warning: {item}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder", file=sys.stderr)
            paths.extend(str(p) for p in found)
        else:
            paths.append(str(item))
    return paths


def is_fraction(value) -> bool:
    """A number in [0, 1] (not a bool), as threshold.json must hold."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1


def resolve_threshold(threshold: float | None, model_dir: Path) -> tuple[float, str]:
    """(threshold, where it comes from): `threshold` if given, else the evaluate stage's choice in
    MODEL_DIR/threshold.json if that file exists, else 0.5."""
    from steeldefect.serve.export import THRESHOLD

    if threshold is not None:
        return threshold, "--threshold"
    path = Path(model_dir) / THRESHOLD
    if not path.is_file():
        return DEFAULT_THRESHOLD, f"default (no --threshold and no {path})"
    try:
        data = json.loads(path.read_text())
        value = data["threshold"]
        if not is_fraction(value):
            raise ValueError(f"threshold {value!r} is not a number in [0, 1]")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: cannot read the threshold chosen by the evaluate stage ({type(e).__name__}: {e}); "
            "rerun `dvc repro evaluate`, delete the file, or give --threshold."
        ) from e
    policy = data.get("policy")
    return float(value), f"{path}" + (f" (policy: {policy})" if policy else "")


def resolve_map_threshold(map_threshold: float | None, model_dir: Path) -> tuple[float, str]:
    """(map threshold, where it comes from): `map_threshold` if given, else `map_threshold` in
    MODEL_DIR/threshold.json (the evaluate stage's evaluate.map_threshold) if there, else 0.5."""
    from steeldefect.serve.export import THRESHOLD

    if map_threshold is not None:
        return map_threshold, "--map-threshold"
    path = Path(model_dir) / THRESHOLD
    try:
        value = json.loads(path.read_text()).get("map_threshold") if path.is_file() else None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {e}); rerun `dvc repro evaluate`.") from e
    if value is None:
        return DEFAULT_THRESHOLD, f"default (no --map-threshold and no map_threshold in {path})"
    if not is_fraction(value):
        raise UserError(f"{path}: map_threshold {value!r} is not a number in [0, 1]; rerun `dvc repro evaluate`.")
    return float(value), str(path)


def resolve_class_thresholds(
    class_threshold: float | None, model_dir: Path, names: list[str]
) -> tuple[dict[str, float], str]:
    """({type name: threshold}, where they come from): `class_threshold` for every type if given, else
    `class_thresholds` in MODEL_DIR/threshold.json (the evaluate stage's, one per type of `names`) if there, else
    0.5 for each type."""
    from steeldefect.serve.export import THRESHOLD

    if class_threshold is not None:
        return dict.fromkeys(names, class_threshold), "--class-threshold"
    path = Path(model_dir) / THRESHOLD
    try:
        values = json.loads(path.read_text()).get("class_thresholds") if path.is_file() else None
        if values is not None and (not isinstance(values, dict) or sorted(values) != sorted(names)):
            raise ValueError(f"class_thresholds {values!r} does not name this model's types {names}")
        if values is not None and not all(map(is_fraction, values.values())):
            raise ValueError(f"class_thresholds {values!r}: not every value is a number in [0, 1]")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(
            f"{path}: cannot read the per-type thresholds chosen by the evaluate stage ({type(e).__name__}: {e}); "
            "rerun `dvc repro evaluate`, delete the file, or give --class-threshold."
        ) from e
    if values is None:
        return dict.fromkeys(names, DEFAULT_THRESHOLD), f"default (no --class-threshold, no class_thresholds in {path})"
    return {name: float(values[name]) for name in names}, str(path)


def map_columns(result, map_threshold: float | None, model_dir: Path, maps_dir: Path | None):
    """The defect area share and bounding box columns of a mask model's predictions (None for a model without
    a defect map), after writing the overlay PNGs to `maps_dir` when given."""
    from steeldefect.serve.maps import map_table, write_overlays

    if result.maps is None:
        return None
    value, source = resolve_map_threshold(map_threshold, model_dir)
    print(f"map threshold {value:g} from {source}")
    if maps_dir is not None:
        n = write_overlays(result.paths, result.maps, value, maps_dir)
        print(f"wrote {n} map images to {maps_dir}")
    return map_table(result.paths, result.maps, value)


def load_for_inference(model_dir: Path, engine: str | None = "keras"):
    """(model, image size, metadata) from the exported files only; UserError when they are missing or
    inconsistent. `engine` "openvino" gives an OpenVINOEngine on the IR instead of the Keras model, after its
    self-check on this CPU (UserError when it fails); None picks it when the IR exists."""
    from steeldefect.serve.export import MODEL_JSON, read_meta
    from steeldefect.serve.openvino_engine import IR_DIR, OpenVINOEngine
    from steeldefect.serve.selfcheck import self_check

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(
            f"--model-dir {model_dir}: no such folder; give the folder holding {MODEL_JSON}, model.weights.h5 "
            "and model_meta.json (the export stage writes them to models/)."
        )
    meta = read_meta(model_dir)
    size = meta.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise UserError(
            f"{model_dir / 'model_meta.json'}: image_size = {size!r} is not [height, width]; export the model again."
        )
    model, name = _load_engine(model_dir, engine)
    expected = tuple(model.input_shape[1:3])
    if None not in expected and expected != tuple(size):
        raise UserError(
            f"{model_dir}: model_meta.json says image_size {size} but {name} takes {list(expected)}; "
            "the files do not belong together: export the model again."
        )
    if isinstance(model, OpenVINOEngine):
        print(self_check(model, model_dir / IR_DIR, size, int(meta.get("batch_size") or DEFAULT_BATCH_SIZE)))
    return model, tuple(size), meta


def _load_engine(model_dir: Path, engine: str | None):
    """(Keras model or OpenVINOEngine, the file it came from)."""
    from steeldefect.serve.export import MODEL_JSON, load_model
    from steeldefect.serve.openvino_engine import IR_DIR, IR_XML, OpenVINOEngine

    ir = model_dir / IR_DIR / IR_XML
    if engine == "openvino" or (engine is None and ir.is_file()):
        if not ir.is_file():
            raise UserError(
                f"--engine openvino: {ir} not found; export it (export.openvino: int8 or fp32 in params.yaml, then "
                "`dvc repro export`) or use --engine keras."
            )
        return OpenVINOEngine(ir), f"{IR_DIR}/{IR_XML}"
    return load_model(model_dir), MODEL_JSON


def check_model_use(model, meta: dict, model_dir: Path, maps_dir: Path | None, paths: list[str]) -> None:
    """Warn about a degenerate model; refuse --maps for a model without a defect map or a bad DIR."""
    from steeldefect.serve.inference import has_defect_map
    from steeldefect.serve.maps import check_maps_dir

    if meta.get("degenerate"):
        print(
            f"warning: {Path(model_dir) / 'model_meta.json'} says this model is degenerate (its training run learned "
            "nothing: constant or chance-level predictions); its probabilities are meaningless.",
            file=sys.stderr,
        )
    if maps_dir is not None:
        if not has_defect_map(model):
            raise UserError(
                f"--maps {maps_dir}: the model in {model_dir} has no defect map (it was trained with "
                "train.supervision: image); export a model trained with train.supervision: mask."
            )
        check_maps_dir(Path(maps_dir), paths)


def thresholds(
    outputs: list[str], meta: dict, threshold: float | None, class_threshold: float | None, model_dir: Path
) -> tuple[float | None, dict[str, float]]:
    """(the defect threshold, None without a defect probability; {type: threshold} in output order, {} without
    types), each printed with where it comes from. A threshold given for an output the model lacks is refused."""
    if threshold is not None and "probability" not in outputs:
        raise UserError(
            f"--threshold: the model in {model_dir} has no defect probability (it was trained on a set with no clean "
            "images), only defect types: give --class-threshold instead."
        )
    if class_threshold is not None and "classes" not in outputs:
        raise UserError(
            f"--class-threshold: the model in {model_dir} has no defect types (it was trained with train.target "
            "defect): give --threshold instead."
        )
    value, limits = None, {}
    if "probability" in outputs:
        value, source = resolve_threshold(threshold, model_dir)
        print(f"threshold {value:g} from {source}")
    if "classes" in outputs:
        limits, source = resolve_class_thresholds(class_threshold, model_dir, meta.get("classes", []))
        print(f"class thresholds {', '.join(f'{n}: {t:g}' for n, t in limits.items())} from {source}")
    return value, limits


def decisions(table, result, threshold: float | None, limits: dict[str, float]) -> list[str]:
    """Add `predicted` (at `threshold`, when the model has a defect probability) and `classes` (the types at or
    above their `limits`, joined by ';') to `table`; return the summary's parts."""
    import numpy as np
    import pandas as pd

    ok, said = np.array([not e for e in result.errors], dtype=bool), []
    if threshold is not None:
        predicted = pd.array(
            [int(p >= threshold) if good else pd.NA for p, good in zip(result.probability, ok)], "Int64"
        )
        table.insert(2, "predicted", predicted)
        n_defect = int((predicted[ok] == 1).sum())
        said.append(f"{n_defect} predicted defect, {int(ok.sum()) - n_defect} clean")
    if limits:
        names = list(limits)
        hits = result.classes >= np.array([limits[n] for n in names])  # (images, types); False when unreadable
        table["classes"] = [";".join(np.array(names)[row]) for row in hits]
        counts = ", ".join(f"{n}: {int(c)}" for n, c in zip(names, hits.sum(axis=0)))
        said.append(f"by predicted type: {counts} ({int((ok & ~hits.any(axis=1)).sum())} with none)")
    return said


def predict(
    inputs: Sequence[str | Path],
    model_dir: Path = Path("models"),
    output: Path = Path("predictions.csv"),
    threshold: float | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    map_threshold: float | None = None,
    maps_dir: Path | None = None,
    engine: str | None = None,
    class_threshold: float | None = None,
) -> int:
    """The `predict` command: writes `output` and returns the exit code (0 all predicted, 1 some unreadable)."""
    import pandas as pd
    from tqdm import tqdm

    from steeldefect import atomic
    from steeldefect.serve.inference import output_names, predict_files, probability_columns
    from steeldefect.serve.openvino_engine import OpenVINOEngine

    paths = expand_images(inputs)
    if not paths:
        raise UserError(f"no images to predict in {', '.join(map(str, inputs))}.")
    model, image_size, meta = load_for_inference(model_dir, engine)
    check_model_use(model, meta, model_dir, maps_dir, paths)
    value, limits = thresholds(output_names(model), meta, threshold, class_threshold, model_dir)
    names = list(limits)
    engine = "openvino" if isinstance(model, OpenVINOEngine) else "keras"
    precision = (meta.get("openvino") or {}).get("precision", "unknown") if engine == "openvino" else "fp32"
    name = f"OpenVINO {precision} IR" if engine == "openvino" else "Keras"
    batch_size = batch_size or int(meta.get("batch_size") or DEFAULT_BATCH_SIZE)
    print(
        f"predicting {len(paths)} images with the model in {model_dir} ({name}) "
        f"(image size {image_size[0]}x{image_size[1]}, batch size {batch_size})"
    )
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, file=sys.stderr) as bar:
        result = predict_files(model, paths, batch_size, image_size, progress=bar.update)

    table = pd.DataFrame({"path": result.paths, **probability_columns(result, names)})
    said = [
        f"{len(paths)} images",
        *decisions(table, result, value, limits),
    ]
    located = map_columns(result, map_threshold, model_dir, maps_dir)
    table = pd.concat([table, located], axis=1) if located is not None else table
    table = table.assign(engine=engine, precision=precision, error=result.errors)
    atomic.write_text(Path(output), table.to_csv(index=False))

    failed = result.failed
    print(f"wrote {output}: {', '.join(said)}" + (f", {len(failed)} unreadable" if failed else ""))
    for i in failed[:10]:
        print(f"  unreadable: {result.paths[i]}: {result.errors[i]}", file=sys.stderr)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (see the error column of {output})", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    code = 0

    def command() -> None:
        nonlocal code
        if args.command == "cache":
            return cache_command(args.action, args.kind)
        if args.command == "preset":
            from steeldefect.presets import run_preset

            code = run_preset(args.name, args.dvc_args)
            return
        code = predict(
            args.images,
            args.model_dir,
            args.output,
            args.threshold,
            args.batch_size,
            progress=not args.no_progress,
            map_threshold=args.map_threshold,
            maps_dir=args.maps,
            engine=args.engine,
            class_threshold=args.class_threshold,
        )

    run(command)
    return code


if __name__ == "__main__":
    sys.exit(main())
