"""Keras models on TensorFlow, compiled once into a graph function.

`model.predict` per frame is the slow path the original design used (it builds
a data pipeline on every call); calling the model inside a `tf.function` with
a batch-polymorphic input signature traces once and then runs the graph
directly, several times faster and safe to call from any thread.

TensorFlow is imported here, lazily, because importing it costs about half a
gigabyte: nothing imports this module until a model is actually loaded.
"""

from __future__ import annotations

import os

import numpy as np

from .base import RuntimeLoadError


class KerasRuntime:
    name = "tensorflow"

    def __init__(self, model_path: str | os.PathLike):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        try:
            model = keras.models.load_model(os.fspath(model_path), compile=False)
        except Exception as exc:
            raise RuntimeLoadError(f"Keras could not load the model file: {type(exc).__name__}: {exc}") from exc
        if isinstance(model.inputs, (list, tuple)) and len(model.inputs) != 1:
            raise RuntimeLoadError(f"the model must have exactly one input, it has {len(model.inputs)}")
        if isinstance(model.outputs, (list, tuple)) and len(model.outputs) != 1:
            raise RuntimeLoadError(f"the model must have exactly one output, it has {len(model.outputs)}")
        input_shape = tuple(model.inputs[0].shape)[1:]
        output_shape = tuple(model.outputs[0].shape)[1:]
        if len(output_shape) != 1 or output_shape[0] is None:
            raise RuntimeLoadError(f"the model output must be a flat vector of scores, got shape {output_shape}")
        self.model = model
        self.input_shape = tuple(input_shape)
        self.output_units = int(output_shape[0])
        self.memory_bytes = int(sum(np.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights))
        signature = [tf.TensorSpec((None, *input_shape), tf.float32)]
        self._call = tf.function(lambda x: model(x, training=False), input_signature=signature)

    def close(self) -> None:
        """Drop the model and its traced graph function, so TensorFlow can free
        the weights. (Not `keras.backend.clear_session()`: it is global and
        would reset models other versions still serve.)"""
        import gc

        self.model = None
        self._call = None
        gc.collect()  # Keras layers and tf.function traces hold reference cycles

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._call is None:
            raise RuntimeError("this TensorFlow runtime was closed")
        return self._call(batch).numpy()
