"""`webapp publish MODEL_FILE --name NAME --store URL`: validate, then upload.

The model is loaded first (with TensorFlow, in this process) so a file that
does not load, or labels that do not match the output size, never reach the
store. The upload is in the directory layout with a `model.json` that records
preprocess, output, labels and input size.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from ..models.modelspec import OUTPUT_KINDS, PREPROCESS_MODES, is_valid_model_name


def register(sub) -> None:
    parser = sub.add_parser("publish", help="validate a Keras model and upload it to a model store")
    parser.add_argument("model_file", type=Path, help="a .keras or .h5 file")
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--store", required=True, help="s3://bucket/prefix or a directory")
    parser.add_argument("--labels", type=Path, help="labels file: one per line, or a JSON list")
    parser.add_argument("--preprocess", choices=PREPROCESS_MODES, default="raw")
    parser.add_argument("--output", choices=OUTPUT_KINDS, default="probabilities")
    parser.add_argument("--queue", default=os.environ.get("MESSAGE_QUEUE"),
                        help="after the upload, tell the servers on this queue (default: $MESSAGE_QUEUE)")
    parser.add_argument("--no-convert", action="store_true",
                        help="do not upload a LiteRT conversion beside the model")
    parser.add_argument("--quantize", choices=("int8",),
                        help="also build a full-integer LiteRT model (model.int8.tflite), which servers prefer")
    parser.add_argument("--calibration", type=Path, metavar="DIR",
                        help="with --quantize: images like the ones the model will see (every 5th is held out "
                             "to measure top-1 agreement with the float model)")
    parser.add_argument("--min-agreement", type=float, default=None, metavar="SHARE",
                        help="with --quantize: the least top-1 agreement accepted (default 0.98)")
    parser.add_argument("--force", action="store_true",
                        help="with --quantize: publish even when the agreement is below --min-agreement")
    parser.set_defaults(run=run)


def _read_labels(path: Path | None):
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        labels = json.loads(text)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{path} must hold a JSON list of strings")
        return tuple(labels)
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def run(args) -> int:
    from ..config import load_config
    from ..models.modelspec import MetadataError, ModelMetadata, ModelSpec
    from ..models.runtime import RuntimeLoadError
    from ..models.runtime.keras_runtime import KerasRuntime
    from ..models.store.publish import publish

    if not is_valid_model_name(args.name):
        print(f"error: {args.name!r} is not a valid model name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}})", file=sys.stderr)
        return 2
    if args.model_file.suffix not in (".keras", ".h5") or not args.model_file.is_file():
        print(f"error: {args.model_file} is not a .keras or .h5 file", file=sys.stderr)
        return 2
    if args.quantize and args.calibration is None:
        print("error: --quantize int8 needs --calibration DIR (images to calibrate with)", file=sys.stderr)
        return 2
    try:
        labels = _read_labels(args.labels)
        runtime = KerasRuntime(args.model_file)
        metadata = ModelMetadata(labels=labels, preprocess=args.preprocess, output=args.output)
        spec = ModelSpec.build(args.name, "-", runtime.input_shape, runtime.output_units, metadata)
    except (OSError, ValueError, RuntimeLoadError, MetadataError) as exc:
        print(f"error: the model was not published: {exc}", file=sys.stderr)
        return 1

    settings = load_config()
    with tempfile.TemporaryDirectory() as scratch:
        described = spec.describe()
        model_json = Path(scratch) / "model.json"
        meta = {"preprocess": spec.preprocess, "output": spec.output, "input": described["input"]}
        files = {f"model{args.model_file.suffix}": args.model_file, "model.json": model_json}
        if labels:
            meta["labels"] = list(labels)
            labels_txt = Path(scratch) / "labels.txt"
            labels_txt.write_text("\n".join(labels) + "\n", encoding="utf-8")
            files["labels.txt"] = labels_txt
        model_json.write_text(json.dumps(meta, indent=2))
        quantized = None
        if args.quantize:
            # Before anything is uploaded: a refused int8 model publishes nothing.
            quantized = _quantize(args, spec, Path(scratch))
            if quantized is None:
                return 1
            files["model.int8.tflite"] = Path(scratch) / "model.int8.tflite"
            meta["int8"] = {key: quantized[key] for key in ("agreement", "held_out", "calibration_images")}
            meta["int8"]["file"] = "model.int8.tflite"
            model_json.write_text(json.dumps(meta, indent=2))
        conversion = None
        if not args.no_convert:
            # Servers then load model.tflite directly and skip converting.
            from ..models.runtime.convert import convert

            tflite = Path(scratch) / "model.tflite"
            conversion = convert(args.model_file, tflite, spec.preprocess)
            if conversion["ok"]:
                files["model.tflite"] = tflite
            else:
                print(f"note: no LiteRT file published, servers will use TensorFlow: {conversion['reason']}",
                      file=sys.stderr)
        total = sum(path.stat().st_size for path in files.values())
        from tqdm import tqdm

        with tqdm(total=total, unit="B", unit_scale=True, desc=f"publishing {args.name}",
                  file=sys.stderr, disable=None) as bar:
            keys = publish(args.store, args.name, files, settings, progress=bar.update)
    notified = None
    if args.queue:
        from ..server.messaging import notify_revalidate

        try:
            notified = notify_revalidate(args.queue, args.name)
        except Exception as exc:  # the upload itself succeeded
            print(f"note: published, but the servers were not notified: {exc}", file=sys.stderr)
    print(json.dumps({"name": args.name, "store": args.store, "files": keys, "processes_notified": notified,
                      "labels": list(spec.labels), "input": described["input"],
                      "litert": bool(conversion and conversion["ok"]),
                      "int8": meta.get("int8")}))
    return 0


def _quantize(args, spec, scratch: Path) -> dict | None:
    """Build model.int8.tflite in `scratch` and judge its agreement; None when refused."""
    from ..frames.images import trusted_input
    from ..models.runtime.quantize import MIN_AGREEMENT, QuantizeError, quantize

    threshold = MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
    try:
        report = quantize(args.model_file, scratch / "model.int8.tflite", spec, args.calibration, trusted_input)
    except (OSError, QuantizeError) as exc:
        print(f"error: the model was not published: {exc}", file=sys.stderr)
        return None
    line = (f"int8: top-1 agreement with the float model {report['agreement']:.2%} "
            f"({report['agreeing']}/{report['held_out']} held-out images; "
            f"{report['calibration_images']} calibration images; {report['bytes'] / 1e6:.1f} MB)")
    print(line, file=sys.stderr)
    if report["agreement"] < threshold:
        if not args.force:
            print(f"error: the model was not published: int8 agreement {report['agreement']:.2%} is below "
                  f"{threshold:.2%}; use --force to publish it anyway, or calibrate with images closer to "
                  "what the model will see", file=sys.stderr)
            return None
        print(f"note: int8 agreement is below {threshold:.2%}; published anyway (--force)", file=sys.stderr)
    return report
