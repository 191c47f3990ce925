"""The exported model as an OpenVINO IR (fp32, or int8 calibrated by NNCF) for fast CPU inference.

`export_ir` converts the Keras model with a fixed image size (batch size free), quantizes it when asked, runs
it through the real predict path on the validation images and refuses it, writing nothing, when it disagrees
with Keras beyond the limits; beside a passing IR it leaves a reference set (`write_reference`) with which
`steeldefect predict` checks the IR again on each CPU that runs it (serve/selfcheck.py). `OpenVINOEngine` runs
the IR batch by batch for `steeldefect predict --engine openvino`: the images come from the same tf.data decode
+ resize + preprocess_input as for Keras.

OpenVINO (already on `import openvino`, and in its converter) and NNCF send usage statistics to Intel unless
the user declined (the file ~/intel/openvino_telemetry holding 0, or CI=true). Nothing in this project talks
to the network at run time, so importing this module declines for the whole process (`decline_telemetry`):
import it before `openvino`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from steeldefect.errors import UserError

IR_DIR, IR_XML = "openvino", "model.xml"  # models/openvino/model.xml + model.bin
REFERENCE_DIR, REFERENCE_CSV = "reference", "reference.csv"  # models/openvino/reference/: the self-check's images
# beside reference.csv for a model with maps: the Keras maps of its images, by output
REFERENCE_MAPS = {"defect_map": "keras_maps.npy", "type_maps": "keras_type_maps.npy"}
PRECISIONS = ("none", "fp32", "int8")
DISABLED = (
    "export.openvino is none in params.yaml, so no OpenVINO IR was exported.\n"
    "Set it to fp32 or int8 and run `dvc repro export` to get models/openvino/model.xml here.\n"
)


def decline_telemetry() -> None:
    """Make `openvino_telemetry` (used by OpenVINO and NNCF) decline consent and send nothing from this process.
    Its `Telemetry` is a singleton whose consent is decided when first made, by `import openvino`: so this must
    run before that import."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
        from openvino_telemetry.utils.sender import TelemetrySender
    except ImportError:  # no telemetry package: nothing to decline
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    TelemetrySender.send = lambda self, *args, **kwargs: None


decline_telemetry()


@dataclass(frozen=True)
class IRRequest:
    """What `export_ir` makes and how it checks it. `threshold(probabilities)` gives the evaluate threshold
    (a fixed number, or the `auto` policy applied to those probabilities)."""

    precision: Literal["fp32", "int8"]
    calibration_paths: Sequence[str]  # int8: the (seeded) sample of training images NNCF calibrates on
    check_paths: Sequence[str]  # the validation images
    threshold: Callable[[np.ndarray], float]
    max_changed: float  # largest share of check images whose decision may change
    tolerance: float  # largest probability difference allowed on any check image
    batch_size: int = 16


class OpenVINOEngine:
    """A compiled IR on the CPU. `predict_on_batch(images)` returns a dict of named outputs, those of the Keras
    model (`probability` (N, 1), `classes` (N, K), `defect_map`, `type_maps`: those it has); each batch is split
    across the CPU streams the performance hint creates, which run at the same time. What is not quantized computes in
    float32: on CPUs with AMX OpenVINO would otherwise compute in bfloat16 (probabilities off by up to 0.012 on
    the default model, against 1.5e-6), unless `config` says so ({"INFERENCE_PRECISION_HINT": "bf16"}). A setting
    OpenVINO refuses, or cannot compile the IR with on this CPU, is a UserError naming it."""

    def __init__(self, xml_path: Path, hint: str = "THROUGHPUT", config: dict | None = None):
        import openvino as ov

        config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32", **(config or {})}
        try:
            self.compiled = ov.Core().compile_model(str(xml_path), "CPU", config)
        except RuntimeError as e:  # OpenVINO raises RuntimeError for a bad setting and for a failed compile
            settings = ", ".join(f"{k}={v}" for k, v in config.items())
            reason = [line for line in str(e).splitlines() if line.strip() and not line.startswith("Exception from")]
            raise UserError(
                f"{xml_path}: OpenVINO cannot compile this IR for this CPU with {settings} ({' '.join(reason)}). "
                "Use the defaults (PERFORMANCE_HINT THROUGHPUT or LATENCY, INFERENCE_PRECISION_HINT f32; bf16 and "
                "f16 need instructions that the AVX2 pin, ONEDNN_MAX_CPU_ISA in steeldefect/__init__.py, keeps from "
                "oneDNN), or predict with --engine keras."
            ) from e
        self.n_requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.n_requests)
        self.names = [output.get_any_name() for output in self.compiled.outputs]
        self.output_names = self.names  # as a Keras model's
        self.input_shape = tuple(None if d.is_dynamic else d.get_length() for d in self.compiled.input(0).partial_shape)

    def predict_on_batch(self, images) -> dict[str, np.ndarray]:
        parts = np.array_split(np.asarray(images, dtype=np.float32), min(self.n_requests, max(len(images), 1)))
        results: list[dict] = [{}] * len(parts)

        def done(request, i):
            results[i] = {name: request.get_output_tensor(k).data.copy() for k, name in enumerate(self.names)}

        self.queue.set_callback(done)
        for i, part in enumerate(parts):
            self.queue.start_async({0: part}, i)
        self.queue.wait_all()
        return {name: np.concatenate([r[name] for r in results]) for name in self.names}


def convert(model, image_size: Sequence[int]):
    """The Keras model as an `openvino.Model` taking (N, height, width, 3) preprocessed images, its outputs
    named as the model names them (`probability` for a model with one output, not a dict)."""
    import openvino as ov

    from steeldefect.serve.inference import output_names

    ov_model = ov.convert_model(model, input=[(-1, *map(int, image_size), 3)])
    names = output_names(model)  # sorted by name, as the converted model orders a dict's outputs
    for output, name in zip(ov_model.outputs, names, strict=True):
        output.get_tensor().set_names({name})
    return ov_model


def quantize(ov_model, calibration_paths: Sequence[str], image_size: Sequence[int]):
    """int8 post-training quantization by NNCF, calibrated on the preprocessed `calibration_paths`. Activation
    ranges are the full min..max seen in calibration: NNCF's default (the mean of each image's min and max)
    clips the largest activations, which are exactly what the global max pooling of the head keeps (on the
    default model: largest probability difference 0.61 on the validation images against 0.08)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from steeldefect.serve.inference import indexed_dataset

    images = [batch.numpy() for _, batch in indexed_dataset(list(calibration_paths), image_size, batch_size=1)]
    full_range = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    return nncf.quantize(ov_model, nncf.Dataset(images), subset_size=len(images), advanced_parameters=full_range)


def save(ov_model, path: Path) -> None:
    """model.xml + model.bin at `path`, the float32 weights kept float32 (OpenVINO would halve them)."""
    import openvino as ov

    ov.save_model(ov_model, path, compress_to_fp16=False)


def compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], threshold: Callable) -> dict:
    """The largest difference over every output of `expected` (by name, one row per image, as
    `inference.Predictions.outputs`), and the images whose decision changed: on the defect probability at the
    evaluate threshold (`threshold(probabilities)`: each engine's own when the policy is `auto`) when the model has
    it, else on the defect types, each at 0.5 (an image changes when any of its types does; `decisions_on` says
    which, for a model with types)."""
    on = "probability" if "probability" in expected else "classes"
    t_keras, t_ir = (threshold(expected[on]), threshold(got[on])) if on == "probability" else (0.5, 0.5)
    n = len(expected[on])
    changed = int(np.sum(np.any(((expected[on] >= t_keras) != (got[on] >= t_ir)).reshape(n, -1), axis=1)))
    figures = {
        "max_probability_difference": max(float(np.max(np.abs(expected[k] - got[k]))) for k in expected),
        "images_checked": n,
        "decisions_changed": changed,
        "decisions_changed_share": changed / n,
        "threshold_keras": t_keras,
        "threshold_openvino": t_ir,
    }
    return {**figures, "decisions_on": on} if "classes" in expected else figures


def export_ir(model, image_size: Sequence[int], folder: Path, request: IRRequest, names: Sequence[str] = ()) -> dict:
    """Write `folder`/model.xml + model.bin and return the check's figures (for model_meta.json), comparing every
    output (`names`: the defect types of a `classes` output). UserError when the IR disagrees with Keras beyond
    `request`'s limits: `folder` must be a temporary folder that the caller moves into place only on success."""

    from steeldefect.serve.inference import predict_all

    ov_model = convert(model, image_size)
    if request.precision == "int8":
        ov_model = quantize(ov_model, request.calibration_paths, image_size)
    save(ov_model, folder / IR_XML)  # what is checked is what is shipped
    keras_out = predict_all(model, request.check_paths, request.batch_size, image_size).outputs
    ir_out = predict_all(OpenVINOEngine(folder / IR_XML), request.check_paths, request.batch_size, image_size).outputs
    figures = {
        "precision": request.precision,
        "path": f"{IR_DIR}/{IR_XML}",
        **compare(keras_out, ir_out, request.threshold),
    }
    figures.update(max_changed=request.max_changed, tolerance=request.tolerance)
    if request.precision == "int8":
        figures["calibration_images"] = len(request.calibration_paths)
    if (
        figures["decisions_changed_share"] > request.max_changed
        or figures["max_probability_difference"] > request.tolerance
    ):
        raise UserError(
            f"{folder.parent / IR_DIR / IR_XML}: the OpenVINO {request.precision} IR disagrees with the Keras model "
            f"on the {figures['images_checked']} validation images: {figures['decisions_changed']} decisions changed "
            f"({figures['decisions_changed_share']:.2%}, limit export.openvino_max_changed = "
            f"{request.max_changed:.2%}), "
            f"largest probability difference {figures['max_probability_difference']:.3g} (limit "
            f"export.openvino_tolerance = {request.tolerance:g}); nothing was exported. Use export.openvino: fp32 "
            "(or none), or raise the limits if this is acceptable."
        )
    figures["reference_images"] = write_reference(folder, request.check_paths, keras_out, figures, names)
    return figures


def reference_indices(prob: np.ndarray, threshold: float, margin: float, n: int = 16) -> np.ndarray:
    """The reference set (sorted indices into `prob`, the defect probabilities (n,), or the types' (n, K)): the n/2
    images closest to the threshold, and the others spread evenly over the (largest) probability order of the rest;
    all among the images whose every probability is farther than `margin` (the export check's largest difference)
    from the threshold, whose decisions the checked IR keeps for sure (closer ones are a coin toss between any two
    implementations; all images when none is that far)."""
    prob = prob.reshape(len(prob), -1)
    distance = np.min(np.abs(prob - threshold), axis=1)
    pool = np.flatnonzero(distance > margin)
    pool = pool if len(pool) else np.arange(len(prob))
    near = pool[np.argsort(distance[pool], kind="stable")][: n // 2]
    rest = np.setdiff1d(pool, near)
    rest = rest[np.argsort(prob[rest].max(axis=1), kind="stable")]
    spread = rest[np.linspace(0, len(rest) - 1, min(n - len(near), len(rest))).round().astype(int)]
    return np.sort(np.concatenate([near, spread]))


def write_reference(
    folder: Path, paths: Sequence[str], outputs: dict[str, np.ndarray], figures: dict, names: Sequence[str] = ()
) -> int:
    """`folder`/reference/: the `reference_indices` images of `paths` (copied byte for byte, numbered), chosen on
    the defect probability, or the types' without it, and reference.csv: file, the Keras outputs
    (`keras_probability`, `keras_p_<name>` per defect type of `names`: those the model has), and the threshold and
    limits the export check applied (`figures`); with maps, the Keras maps in keras_maps.npy (and the per-type maps
    in keras_type_maps.npy). Returns the number of images."""
    import pandas as pd

    from steeldefect.data.types import columns

    threshold, out = figures["threshold_keras"], Path(folder) / REFERENCE_DIR
    on = outputs.get("probability", outputs.get("classes"))
    chosen = reference_indices(on, threshold, figures["max_probability_difference"])
    files = [f"{k:02d}-{Path(paths[i]).name}" for k, i in enumerate(chosen)]
    out.mkdir()
    for name, i in zip(files, chosen):
        shutil.copyfile(paths[i], out / name)
    table = pd.DataFrame({"file": files})
    if "probability" in outputs:
        table["keras_probability"] = outputs["probability"][chosen].astype(float)
    if "classes" in outputs:
        table[["keras_" + c for c in columns(list(names))]] = outputs["classes"][chosen].astype(float)
    table = table.assign(threshold=threshold, tolerance=figures["tolerance"], max_changed=figures["max_changed"])
    table.to_csv(out / REFERENCE_CSV, index=False)
    for name, file in REFERENCE_MAPS.items():
        if name in outputs:
            np.save(out / file, outputs[name][chosen])
    return len(chosen)
