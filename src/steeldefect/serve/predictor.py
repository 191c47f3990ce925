"""The inference session shared by `steeldefect predict`, the predict stage and `steeldefect serve`.

A `Predictor` loads an exported model folder once (the Keras model, or the OpenVINO IR after its self-check on
this CPU), resolves the thresholds (the defect probability's, each defect type's and the defect map's, from the
arguments, else MODEL_DIR/threshold.json, else 0.5; the smallest defect region's area likewise, else 0 pixels) and
checks how the model is used. `predict` scores images (files, or encoded images as bytes) through the one
preprocessing path and returns the result table, one row per image with the columns of a `steeldefect predict`
CSV. Nothing is printed: what the command prints is returned as notices (a warning starts with "warning: "), and
every refusal is a UserError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from steeldefect.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH_SIZE = 16  # when model_meta.json does not record the predict stage's batch size


@dataclass(frozen=True)
class Prediction:
    """One `Predictor.predict` call: `table` (one row per image: path, probability, predicted, p_<name>...,
    classes, defect_area_share, box_*, engine, precision, error, those the model has), the indices of the
    unreadable images, the notices, the summary (e.g. "5 images, 3 predicted defect, 2 clean, 1 unreadable"),
    for a mask model each image's defect map ((h, w) float32; None when unreadable) and, when asked for, the
    defect list (`regions.defect_table`: one row per defect region; with types, per region of each type's map,
    named by its type); with types also each image's per-type maps ((h, w, K) float32, `type_maps`)."""

    table: pd.DataFrame
    failed: list[int]
    notices: list[str]
    summary: str = ""
    maps: list[np.ndarray | None] | None = None
    defects: pd.DataFrame | None = None
    type_maps: list[np.ndarray | None] | None = None


class Predictor:
    """An exported model ready to predict; see the module docstring. Attributes: `model` (Keras model or
    OpenVINOEngine), `engine` ("keras" / "openvino"), `precision` ("fp32" / "int8"), `name` (as the command says
    it), `version` (the export's fingerprint, `model_files.fingerprint`), `outputs` (those of probability,
    classes, defect_map the model has), `class_names`, `image_size`, `batch_size`, `meta` (model_meta.json),
    `threshold`, `class_thresholds`, `map_threshold`, `min_area` (pixels, or {type: pixels}; None without a map)
    and `notices` (what loading said). `decide=False` (the predict stage) reads no threshold: the table then holds
    the probabilities only (no predicted, classes or map columns). `hint`: the OpenVINO performance hint,
    THROUGHPUT (CPU streams, each batch split across them: for folders) or LATENCY (one inference on every core:
    half the time for one image, the same for a batch; the service's)."""

    def __init__(
        self,
        model_dir: Path,
        engine: str | None = None,
        threshold: float | None = None,
        class_threshold: float | None = None,
        map_threshold: float | None = None,
        batch_size: int | None = None,
        *,
        min_area: int | None = None,
        decide: bool = True,
        hint: str = "THROUGHPUT",
    ):
        from steeldefect.serve.inference import output_names
        from steeldefect.serve.model_files import fingerprint

        self.model_dir = Path(model_dir)
        self.notices: list[str] = []
        self.model, self.image_size, self.meta = self._load(engine, hint)
        self.outputs = output_names(self.model)
        openvino = self.engine == "openvino"
        self.precision = (self.meta.get("openvino") or {}).get("precision", "unknown") if openvino else "fp32"
        self.name = f"OpenVINO {self.precision} IR" if openvino else "Keras"
        self.version = fingerprint(self.model_dir)
        self.batch_size = batch_size or int(self.meta.get("batch_size") or DEFAULT_BATCH_SIZE)
        self.class_names = list(self.meta.get("classes", []))
        if self.meta.get("degenerate"):
            self.notices.append(
                f"warning: {self.model_dir / 'model_meta.json'} says this model is degenerate (its training run "
                "learned nothing: constant or chance-level predictions); its probabilities are meaningless."
            )
        self.threshold, self.class_thresholds, self.map_threshold, self.min_area = None, {}, None, None
        if decide:
            self._thresholds(threshold, class_threshold, map_threshold, min_area)

    def _load(self, engine: str | None, hint: str):
        """(model, image size, metadata) from the exported files only; UserError when they are missing or
        inconsistent. `engine` "openvino" gives an OpenVINOEngine on the IR instead of the Keras model, after its
        self-check on this CPU (UserError when it fails); None picks it when the IR exists."""
        from steeldefect.serve.model_files import MODEL_JSON, load_model, read_meta
        from steeldefect.serve.openvino_engine import IR_DIR, IR_XML, OpenVINOEngine
        from steeldefect.serve.selfcheck import self_check

        model_dir = self.model_dir
        if not model_dir.is_dir():
            raise UserError(
                f"--model-dir {model_dir}: no such folder; give the folder holding {MODEL_JSON}, model.weights.h5 "
                "and model_meta.json (the export stage writes them to models/)."
            )
        meta = read_meta(model_dir)
        size = meta.get("image_size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise UserError(
                f"{model_dir / 'model_meta.json'}: image_size = {size!r} is not [height, width]; export the model "
                "again."
            )
        ir = model_dir / IR_DIR / IR_XML
        if engine == "openvino" or (engine is None and ir.is_file()):
            if not ir.is_file():
                raise UserError(
                    f"--engine openvino: {ir} not found; export it (export.openvino: int8 or fp32 in params.yaml, "
                    "then `dvc repro export`) or use --engine keras."
                )
            model, self.engine, file = OpenVINOEngine(ir, hint), "openvino", f"{IR_DIR}/{IR_XML}"
        else:
            model, self.engine, file = load_model(model_dir), "keras", MODEL_JSON
        expected = tuple(model.input_shape[1:3])
        if None not in expected and expected != tuple(size):
            raise UserError(
                f"{model_dir}: model_meta.json says image_size {size} but {file} takes {list(expected)}; "
                "the files do not belong together: export the model again."
            )
        if self.engine == "openvino":
            batch = int(meta.get("batch_size") or DEFAULT_BATCH_SIZE)
            self.notices.append(self_check(model, model_dir / IR_DIR, size, batch))
        return model, tuple(size), meta

    def _thresholds(
        self,
        threshold: float | None,
        class_threshold: float | None,
        map_threshold: float | None,
        min_area: int | None,
    ):
        """The defect threshold (None without a defect probability), {type: threshold} in output order ({}
        without types), the map threshold and the smallest defect area (None without a defect map), each noted
        with where it comes from. A threshold given for an output the model lacks is refused (a map threshold and
        a min area are ignored)."""
        if threshold is not None and "probability" not in self.outputs:
            raise UserError(
                f"--threshold: the model in {self.model_dir} has no defect probability (it was trained on a set with "
                "no clean images), only defect types: give --class-threshold instead."
            )
        if class_threshold is not None and "classes" not in self.outputs:
            raise UserError(
                f"--class-threshold: the model in {self.model_dir} has no defect types (it was trained with "
                "train.target defect): give --threshold instead."
            )
        if "probability" in self.outputs:
            self.threshold, source = resolve_threshold(threshold, self.model_dir)
            self.notices.append(f"threshold {self.threshold:g} from {source}")
        if "classes" in self.outputs:
            self.class_thresholds, source = resolve_class_thresholds(class_threshold, self.model_dir, self.class_names)
            listed = ", ".join(f"{n}: {t:g}" for n, t in self.class_thresholds.items())
            self.notices.append(f"class thresholds {listed} from {source}")
        if "defect_map" in self.outputs:
            self.map_threshold, source = resolve_map_threshold(map_threshold, self.model_dir)
            named = set(self.map_threshold) if isinstance(self.map_threshold, dict) else set(self.class_names)
            if named != set(self.class_names):
                raise UserError(
                    f"{source}: map_threshold names the types {', '.join(sorted(named))}, but the model's are "
                    f"{', '.join(self.class_names) or 'none'}; rerun `dvc repro evaluate`, or give --map-threshold."
                )
            self.notices.append(f"map threshold {describe_by_type(self.map_threshold, '')} from {source}")
            self.min_area, source = resolve_min_area(min_area, self.model_dir)
            self.notices.append(f"min defect area {describe_min_area(self.min_area)} from {source}")

    def predict(
        self,
        images: Sequence[str | Path | bytes],
        names: Sequence[str] | None = None,
        maps_dir: Path | None = None,
        progress: Callable[[int], object] | None = None,
        defects: bool = False,
        mm_per_pixel: float | None = None,
        decoded: Sequence[np.ndarray | None] | None = None,
    ) -> Prediction:
        """Score `images` (image files, or encoded images as bytes: decoded by the same `decode_and_preprocess`),
        in batches of `batch_size`. `names`: the `path` column (default: the paths; "image <i>" for bytes).
        `maps_dir` (mask models): write each image with its map overlaid there. `defects` (mask models): also
        return the defect list, with mm columns at `mm_per_pixel` mm per pixel when given. A model with per-type
        maps lists the regions of each type's map, its overlays colour each type. `progress(n)`: called with the
        images handled since the last call. `decoded`: the images already `decode`d. Unreadable: an error text."""
        import pandas as pd

        from steeldefect.serve import maps
        from steeldefect.serve.inference import predict_files, probability_columns

        images = [x if isinstance(x, bytes) else str(x) for x in images]
        if names is None:
            names = [f"image {i}" if isinstance(x, bytes) else x for i, x in enumerate(images)]
        names = [str(n) for n in names]
        if len(names) != len(images):
            raise UserError(f"{len(names)} names for {len(images)} images: give one name per image.")
        if maps_dir is not None:
            if "defect_map" not in self.outputs:
                raise UserError(
                    f"--maps {maps_dir}: the model in {self.model_dir} has no defect map (it was trained with "
                    "train.supervision: image); export a model trained with train.supervision: mask."
                )
            maps.check_maps_dir(Path(maps_dir), names)
        if defects and "defect_map" not in self.outputs:
            raise UserError(
                f"--defects: the model in {self.model_dir} has no defect map to find defect regions in (it was "
                "trained with train.supervision: image); export a model trained with train.supervision: mask."
            )
        result = predict_files(self.model, images, self.batch_size, self.image_size, progress, decoded)
        table = pd.DataFrame({"path": names, **probability_columns(result, self.class_names)})
        said, notices = [f"{len(images)} images", *decisions(table, result, self.threshold, self.class_thresholds)], []
        found = None
        if result.maps is not None and self.map_threshold is not None:
            types = {"type_maps": result.type_maps, "type_names": self.class_names}  # type_maps None: no types
            if maps_dir is not None:
                n = maps.write_overlays(names, result.maps, self.map_threshold, Path(maps_dir), images, **types)
                notices.append(f"wrote {n} map images to {maps_dir}")
            any_defect = maps.value_for(self.map_threshold)
            table = pd.concat([table, maps.map_table(images, result.maps, any_defect)], axis=1)
            if defects:
                from steeldefect.serve.regions import defect_table  # SciPy: only when asked for

                found = defect_table(
                    images, result.maps, self.map_threshold, self.min_area, mm_per_pixel, names, **types
                )
        table = table.assign(engine=self.engine, precision=self.precision, error=result.errors)
        failed = result.failed
        summary = ", ".join(said) + (f", {len(failed)} unreadable" if failed else "")
        return Prediction(table, failed, notices, summary, result.maps, found, result.type_maps)

    def decode(self, data: bytes) -> np.ndarray | None:
        """An encoded image preprocessed as `predict` does, None when it cannot be decoded: the service decodes
        each request as it arrives, while the engine scores the batch before."""
        from steeldefect.serve.inference import decode_one

        return decode_one(data, self.image_size)


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


def is_fraction(value) -> bool:
    """A number in [0, 1] (not a bool), as threshold.json must hold."""
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value <= 1


def is_area(value) -> bool:
    """A number >= 0 (not a bool): a min area in pixels, as threshold.json must hold."""
    return not isinstance(value, bool) and isinstance(value, int | float) and value >= 0


def resolve_threshold(threshold: float | None, model_dir: Path) -> tuple[float, str]:
    """(threshold, where it comes from): `threshold` if given, else the evaluate stage's choice in
    MODEL_DIR/threshold.json if that file exists, else 0.5."""
    from steeldefect.serve.model_files import THRESHOLD

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


def resolve_map_threshold(map_threshold: float | None, model_dir: Path) -> tuple[float | dict[str, float], str]:
    """(map threshold, where it comes from): `map_threshold` if given, else `map_threshold` in
    MODEL_DIR/threshold.json (the evaluate stage's evaluate.map_threshold: a number, or {type name: number} for a
    model with types, read by `maps.value_for`) if there, else 0.5."""
    from steeldefect.serve.model_files import THRESHOLD

    if map_threshold is not None:
        return map_threshold, "--map-threshold"
    path = Path(model_dir) / THRESHOLD
    try:
        value = json.loads(path.read_text()).get("map_threshold") if path.is_file() else None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {e}); rerun `dvc repro evaluate`.") from e
    if value is None:
        return DEFAULT_THRESHOLD, f"default (no --map-threshold and no map_threshold in {path})"
    if isinstance(value, dict) and value and all(map(is_fraction, value.values())):
        return {str(k): float(v) for k, v in value.items()}, str(path)
    if not is_fraction(value):
        raise UserError(
            f"{path}: map_threshold {value!r} is not a number in [0, 1] or an object {{type name: number in [0, 1]}}; "
            "rerun `dvc repro evaluate`."
        )
    return float(value), str(path)


def resolve_min_area(min_area: int | None, model_dir: Path) -> tuple[float | dict[str, float], str]:
    """(smallest defect region in pixels of the original image, where it comes from): `min_area` if given, else
    `min_area` in MODEL_DIR/threshold.json (a number, or {type name: number}) if there, else 0."""
    from steeldefect.serve.model_files import THRESHOLD

    if min_area is not None:
        return min_area, "--min-area"
    path = Path(model_dir) / THRESHOLD
    try:
        value = json.loads(path.read_text()).get("min_area") if path.is_file() else None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {e}); rerun `dvc repro evaluate`.") from e
    if value is None:
        return 0, f"default (no --min-area and no min_area in {path})"
    if not (is_area(value) or (isinstance(value, dict) and all(map(is_area, value.values())))):
        raise UserError(
            f"{path}: min_area {value!r} is not a number >= 0 (pixels) or an object {{type name: number >= 0}}; "
            "rerun `dvc repro evaluate`."
        )
    return value, str(path)


def describe_min_area(min_area: float | dict[str, float]) -> str:
    """A min area as the notice says it: "50 px", or "scratch: 50 px, pit: 4 px"."""
    return describe_by_type(min_area, " px") if min_area != {} else "0 px"


def describe_by_type(value: float | dict[str, float], unit: str) -> str:
    """A number or {type name: number} as the notices say it: "50 px", or "scratch: 50 px, pit: 4 px"."""
    if isinstance(value, dict):
        return ", ".join(f"{name}: {describe_by_type(v, unit)}" for name, v in value.items())
    return f"{int(value)}{unit}" if unit and float(value).is_integer() else f"{value:g}{unit}"


def resolve_class_thresholds(
    class_threshold: float | None, model_dir: Path, names: list[str]
) -> tuple[dict[str, float], str]:
    """({type name: threshold}, where they come from): `class_threshold` for every type if given, else
    `class_thresholds` in MODEL_DIR/threshold.json (the evaluate stage's, one per type of `names`) if there, else
    0.5 for each type."""
    from steeldefect.serve.model_files import THRESHOLD

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
