"""The `steeldefect` command.

    steeldefect predict IMAGES_OR_FOLDERS... --model-dir models --output predictions.csv [--threshold X]
                        [--class-threshold X] [--engine keras|openvino] [--maps DIR]
                        [--defects FILE.csv [--min-area N] [--mm-per-pixel X]]
    steeldefect cache info | clear [--kind features|images|selfcheck|pretrain]
    steeldefect preset demo|scratch|imagenet [-S key=value ...] [more dvc exp run arguments]
    steeldefect serve --model-dir models [--host 127.0.0.1] [--port 8000] [--engine openvino|keras] [--max-batch N]
                      [--max-delay-ms MS] [--review-dir DIR --review-band LO,HI --review-cap N]  (serve/service.py)

predicts with the exported model only (model.json + model.weights.h5, loaded in Keras safe mode, or the OpenVINO
IR in openvino/, the default when it exists; the image size from model_meta.json), through the same tf.data
preprocessing and prediction code as the predict stage, and writes one CSV row per image: path, probability,
predicted (0 clean / 1 defect), engine (keras or openvino), precision (fp32 or int8), error. A model with defect
types (train.target classes) adds p_<name> per type and classes (the types at or above their thresholds, joined by
";") after predicted; without a defect probability (trained on no clean images) probability and predicted are
absent. A mask-supervised model (one with a defect map) adds defect_area_share and box_x0, box_y0, box_x1, box_y1
(the defect's bounding box in the original image's pixels) after those, `--maps DIR` writes each image with its
map overlaid and `--defects FILE.csv` the defect list, one row per connected defect region (serve/regions.py).
An unreadable image gets its error text instead of a probability and does not stop the run. The IR is
first checked on this CPU against Keras (serve/selfcheck.py). Exit codes: see EXIT_CODES (the same for the stages).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from steeldefect.errors import UserError, run
from steeldefect.serve.predictor import DEFAULT_THRESHOLD

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is expanded to
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


def _bounded(kind: type, low: float, strict: bool = False):
    """An argparse type: an int or float `kind` (finite) that is >= `low` (> `low` with `strict`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} is not {'a number > ' if strict else '>= '}{low:g}")
        return value

    return parse


_positive_int, _non_negative_int, _positive_float = _bounded(int, 1), _bounded(int, 0), _bounded(float, 0, strict=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steeldefect",
        description="Steel-defect classifier commands.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(commands)
    _add_serve(commands)
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
    _add_defects(predict)
    predict.add_argument(
        "--engine",
        choices=("keras", "openvino"),
        default=None,
        help="keras (model.json + weights) or openvino (the IR in MODEL_DIR/openvino/, fast on CPUs, checked "
        "against Keras on its reference images the first time it runs on a CPU); default: openvino when that IR "
        "exists, else keras",
    )
    predict.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def _add_defects(predict) -> None:
    """The defect list options of `predict` (mask models): --defects, --min-area, --mm-per-pixel."""
    predict.add_argument(
        "--defects",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="mask models: write the defect list to FILE.csv, one row per connected region of map cells >= the map "
        "threshold: path, region, type, probability (the map's maximum in it), area_px, box_x0, box_y0, box_x1, "
        "box_y1, length_px and width_px (the sides of its smallest rotated rectangle), in the image's own pixels",
    )
    predict.add_argument(
        "--min-area",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="--defects: leave out regions under N pixels of the original image (default: min_area in "
        "MODEL_DIR/threshold.json if present, else 0)",
    )
    predict.add_argument(
        "--mm-per-pixel",
        type=_positive_float,
        default=None,
        metavar="X",
        help="--defects: the pixel size in mm; adds area_mm2, length_mm and width_mm",
    )


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
    from steeldefect import cache

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
    defects: Path | None = None,
    min_area: int | None = None,
    mm_per_pixel: float | None = None,
) -> int:
    """The `predict` command: writes `output` (and the defect list to `defects`) and returns the exit code (0 all
    predicted, 1 some unreadable)."""
    from tqdm import tqdm

    from steeldefect import atomic
    from steeldefect.serve.predictor import Predictor

    defects = None if defects is None else Path(defects)
    check_defects_file(defects, mm_per_pixel, Path(output))
    paths = expand_images(inputs)
    if not paths:
        raise UserError(f"no images to predict in {', '.join(map(str, inputs))}.")
    predictor = Predictor(model_dir, engine, threshold, class_threshold, map_threshold, batch_size, min_area=min_area)
    show(predictor.notices)
    size = predictor.image_size
    print(
        f"predicting {len(paths)} images with the model in {model_dir} ({predictor.name}) "
        f"(image size {size[0]}x{size[1]}, batch size {predictor.batch_size})"
    )
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, file=sys.stderr) as bar:
        result = predictor.predict(
            paths, maps_dir=maps_dir, progress=bar.update, defects=defects is not None, mm_per_pixel=mm_per_pixel
        )
    show(result.notices)
    atomic.write_text(Path(output), result.table.to_csv(index=False))

    failed = result.failed
    print(f"wrote {output}: {result.summary}")
    if defects is not None:
        atomic.write_text(defects, result.defects.to_csv(index=False))
        print(f"wrote {len(result.defects)} defect regions of {result.defects.path.nunique()} images to {defects}")
    for i in failed[:10]:
        print(f"  unreadable: {paths[i]}: {result.table.error[i]}", file=sys.stderr)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (see the error column of {output})", file=sys.stderr)
    return 1 if failed else 0


def check_defects_file(defects: Path | None, mm_per_pixel: float | None, output: Path | None = None) -> None:
    """Refuse, before the model is loaded, a --defects FILE that cannot be written or is the predictions CSV
    `output` (one would overwrite the other), and --mm-per-pixel without it."""
    if defects is None:
        if mm_per_pixel is not None:
            raise UserError(
                "--mm-per-pixel: it adds the mm columns of the defect list, which only --defects writes; add "
                "--defects FILE.csv, or leave out --mm-per-pixel."
            )
        return
    if defects.is_dir():
        raise UserError(
            f"--defects {defects}: is a folder; give the CSV file to write the defect list to, e.g. "
            f"{defects / 'defects.csv'}."
        )
    if output is not None and defects.resolve() == output.resolve():
        raise UserError(
            f"--defects {defects}: is also --output, the predictions CSV; the defect list would overwrite it. Give "
            "the defect list its own file, e.g. defects.csv."
        )
    if not defects.parent.is_dir():
        raise UserError(
            f"--defects {defects}: the folder {defects.parent} does not exist; create it first, or give a file in "
            "an existing folder."
        )


def _band(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO,HI (two probabilities, e.g. 0.3,0.7)")
    lo, hi = map(_threshold, parts)
    if lo >= hi:
        raise argparse.ArgumentTypeError(f"{text}: LO must be below HI")
    return lo, hi


def _add_serve(commands) -> None:
    """The `serve` subcommand (serve/service.py; needs the serve extra)."""
    serve = commands.add_parser(
        "serve",
        help="serve the exported model over HTTP (v2 inference protocol, POST /predict, /metrics)",
        description="Serve the exported model over HTTP until SIGTERM (drains the requests in flight, exits 0) or "
        "Ctrl-C: GET /v2/health/live, /v2/health/ready (ready once the model is loaded and its OpenVINO self-check "
        "passed; a failure exits 2 with the message), GET /v2/models/steeldefect, POST /v2/models/steeldefect/infer "
        "(a BYTES input image_bytes), POST /predict (multipart field image, or an image/jpeg or image/png body), "
        "GET /metrics (Prometheus). Answers carry the fields of a `steeldefect predict` CSV row. Needs "
        "pip install 'steeldefect[serve]'. See docs/inference.md, Serve.",
    )
    serve.add_argument("--model-dir", type=Path, default=Path("models"), help="the exported model (default: models)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument(
        "--engine",
        choices=("keras", "openvino"),
        default=None,
        help="as for predict (default: openvino when its IR exists)",
    )
    _add_thresholds(serve)
    serve.add_argument(
        "--max-batch", type=_positive_int, default=16, help="images scored together at most (default: 16)"
    )
    serve.add_argument(
        "--max-delay-ms",
        type=float,
        default=0.0,
        help="how long the first waiting request waits for others to share its batch (default: 0, as Triton's "
        "max_queue_delay: a batch is what queued while the engine scored the one before)",
    )
    serve.add_argument(
        "--review-dir",
        type=Path,
        default=None,
        help="write images in the uncertainty band there, each with a JSON "
        "sidecar holding its answer (a folder `steeldefect predict` reads back)",
    )
    serve.add_argument(
        "--review-band",
        type=_band,
        default=None,
        metavar="LO,HI",
        help="the uncertainty band of the defect probability, for the review queue and the uncertain-share metric "
        "(default: the threshold +- 0.2)",
    )
    serve.add_argument(
        "--review-cap",
        type=_positive_int,
        default=1000,
        help="images the review folder may hold; more are not "
        "written (counted in /metrics) until some are moved out (default: 1000)",
    )


def serve_command(args) -> int:
    try:
        from steeldefect.serve.service import serve
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("fastapi", "starlette", "uvicorn", "multipart", "prometheus_client"):
            raise
        raise UserError(
            f"`steeldefect serve` needs the service's packages ({e.name} is not installed): "
            "pip install 'steeldefect[serve]'."
        ) from e
    if args.max_delay_ms < 0:
        raise UserError(f"--max-delay-ms {args.max_delay_ms:g}: give 0 (no waiting) or more.")
    return serve(
        args.model_dir,
        args.host,
        args.port,
        args.engine,
        args.max_batch,
        args.max_delay_ms,
        args.threshold,
        args.class_threshold,
        args.review_dir,
        args.review_band,
        args.review_cap,
    )


def show(notices: list[str]) -> None:
    """Print a Predictor's notices: warnings to stderr, the rest to stdout."""
    for notice in notices:
        print(notice, file=sys.stderr if notice.startswith("warning: ") else sys.stdout)


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
        if args.command == "serve":
            code = serve_command(args)
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
            defects=args.defects,
            min_area=args.min_area,
            mm_per_pixel=args.mm_per_pixel,
        )

    run(command)
    return code


if __name__ == "__main__":
    sys.exit(main())
