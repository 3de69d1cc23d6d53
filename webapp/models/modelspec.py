"""What a stored model declares about itself, and how its outputs become labels.

A model in the store is a Keras file plus optional metadata (`labels.txt`,
`labels.json`, `model.json`). This module turns that metadata and the loaded
model's shapes into one `ModelSpec`, and turns raw model outputs into the
ordered `labels` list of a `label` event. It knows nothing about where the
files came from (store) or how the model runs (runtime).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

#: Model names are path- and URL-safe; anything else is `unknown_model`
#: without touching the store (no path traversal, no odd S3 keys).
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

PREPROCESS_MODES = ("raw", "unit", "symmetric", "caffe", "torch")
OUTPUT_KINDS = ("probabilities", "logits", "sigmoid")


def is_valid_model_name(name) -> bool:
    return isinstance(name, str) and MODEL_NAME_RE.fullmatch(name) is not None


class MetadataError(ValueError):
    """The model's metadata files are malformed or disagree with the model."""


@dataclass(frozen=True)
class ModelMetadata:
    """The optional files beside a model, parsed and validated."""

    labels: tuple[str, ...] | None = None
    preprocess: str = "raw"
    output: str = "probabilities"
    #: What `publish --quantize int8` measured: {"agreement": top-1 share, "held_out": images, ...}.
    int8: dict | None = None

    @classmethod
    def parse(cls, labels_txt: str | None = None, labels_json: str | None = None,
              model_json: str | None = None) -> "ModelMetadata":
        labels = None
        preprocess, output, int8 = "raw", "probabilities", None
        if model_json is not None:
            try:
                meta = json.loads(model_json)
            except ValueError as exc:
                raise MetadataError(f"model.json is not valid JSON: {exc}") from None
            if not isinstance(meta, dict):
                raise MetadataError("model.json must hold a JSON object")
            preprocess = meta.get("preprocess", preprocess)
            output = meta.get("output", output)
            if "labels" in meta:
                labels = _check_labels(meta["labels"], "model.json labels")
            int8 = meta.get("int8")
            if int8 is not None and not isinstance(int8, dict):
                raise MetadataError("model.json int8 must be an object")
        if labels_json is not None:
            try:
                labels = _check_labels(json.loads(labels_json), "labels.json")
            except ValueError as exc:
                raise MetadataError(f"labels.json is not valid JSON: {exc}") from None
        elif labels_txt is not None:
            lines = [line.strip() for line in labels_txt.splitlines()]
            labels = _check_labels([line for line in lines if line], "labels.txt")
        if preprocess not in PREPROCESS_MODES:
            raise MetadataError(f"preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {preprocess!r}")
        if output not in OUTPUT_KINDS:
            raise MetadataError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        return cls(labels=labels, preprocess=preprocess, output=output, int8=int8)


def _check_labels(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MetadataError(f"{where} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the data plane needs to feed a model and read its answer."""

    name: str
    version: str
    height: int
    width: int
    channels: int
    labels: tuple[str, ...]
    preprocess: str
    output: str
    #: Width of the model's raw output (1 for a single sigmoid unit).
    output_units: int = field(default=0)

    @classmethod
    def build(cls, name: str, version: str, input_shape, output_units: int,
              metadata: ModelMetadata) -> "ModelSpec":
        """Combine the model's own shapes with its metadata, checking they agree."""
        if len(input_shape) != 3 or any(d is None for d in input_shape):
            raise MetadataError(
                f"model input must be (height, width, channels) with fixed sizes, got {tuple(input_shape)}"
            )
        height, width, channels = (int(d) for d in input_shape)
        if channels not in (1, 3, 4):
            raise MetadataError(f"model input must have 1, 3 or 4 channels, got {channels}")
        n_scores = 2 if output_units == 1 else output_units
        labels = metadata.labels
        if labels is None:
            labels = tuple(f"class_{i}" for i in range(n_scores))
        elif output_units == 1 and len(labels) == 1:
            # One label for one sigmoid unit: the unit is that label's probability.
            labels = (f"not {labels[0]}", labels[0])
        if len(labels) != n_scores:
            raise MetadataError(
                f"the model has {n_scores} outputs but {len(labels)} labels were given"
            )
        return cls(name=name, version=version, height=height, width=width,
                   channels=channels, labels=tuple(labels),
                   preprocess=metadata.preprocess, output=metadata.output,
                   output_units=output_units)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "input": {"height": self.height, "width": self.width, "channels": self.channels},
            "labels": list(self.labels),
            "preprocess": self.preprocess,
            "output": self.output,
        }


def scores_from_outputs(outputs: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Turn a batch of raw outputs [n, units] into per-label scores [n, labels].

    `probabilities` are used as they are; `logits` go through a softmax;
    `sigmoid` (independent per-unit probabilities) are used as they are. A
    single unit becomes two scores, (1 - p, p), whatever the kind, because a
    one-unit model is a binary classifier whose unit is the second label.
    """
    outputs = np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1)
    if spec.output == "logits":
        if outputs.shape[1] == 1:
            outputs = 1.0 / (1.0 + np.exp(-outputs))
        else:
            shifted = outputs - outputs.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            outputs = exp / exp.sum(axis=1, keepdims=True)
    if outputs.shape[1] == 1:
        outputs = np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def top_labels(scores: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """The k best labels of one frame, highest score first (ties: label order)."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


#: The constants of the `caffe` and `torch` preprocess modes (ImageNet statistics).
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalise(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Apply a preprocess mode to uint8 pixels; float32 all the way."""
    x = pixels.astype(np.float32)
    if mode == "raw":
        return x
    if mode == "unit":
        return x * np.float32(1 / 255)
    if mode == "symmetric":
        return x * np.float32(1 / 127.5) - np.float32(1.0)
    if mode == "caffe":
        if x.shape[-1] == 3:
            return x[..., ::-1] - _CAFFE_MEAN_BGR
        return x - np.float32(_CAFFE_MEAN_BGR.mean())
    if mode == "torch":
        x = x * np.float32(1 / 255)
        if x.shape[-1] == 3:
            return (x - _TORCH_MEAN) / _TORCH_STD
        return (x - np.float32(_TORCH_MEAN.mean())) / np.float32(_TORCH_STD.mean())
    raise ValueError(f"unknown preprocess mode {mode!r}")
