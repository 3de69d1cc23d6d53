"""Model metadata parsing and output conversion."""

from __future__ import annotations

import numpy as np
import pytest

from webapp.models.modelspec import (
    MetadataError, ModelMetadata, ModelSpec, is_valid_model_name, scores_from_outputs, top_labels,
)

pytestmark = pytest.mark.quick  # in `make test-fast`


@pytest.mark.parametrize("name,valid", [
    ("shapes", True), ("projA-v2.1_x", True), ("a" * 64, True), ("a" * 65, False),
    ("../x", False), ("-x", False), (".hidden", False), ("", False), ("a/b", False), (5, False),
])
def test_model_names(name, valid):
    assert is_valid_model_name(name) is valid


def test_metadata_sources_and_precedence():
    meta = ModelMetadata.parse(labels_txt="a\nb\n\n", model_json='{"preprocess": "unit", "labels": ["x", "y"]}')
    assert meta.labels == ("a", "b") and meta.preprocess == "unit" and meta.output == "probabilities"
    assert ModelMetadata.parse(labels_json='["p", "q"]').labels == ("p", "q")
    for bad in ('{"preprocess": "weird"}', '{"output": "x"}', "[1]", "{not json"):
        with pytest.raises(MetadataError):
            ModelMetadata.parse(model_json=bad)


def test_label_count_must_match_outputs():
    with pytest.raises(MetadataError):
        ModelSpec.build("m", "v", (8, 8, 3), 3, ModelMetadata(labels=("a", "b")))
    default = ModelSpec.build("m", "v", (8, 8, 3), 3, ModelMetadata())
    assert default.labels == ("class_0", "class_1", "class_2")


def test_single_sigmoid_unit_gives_two_labels():
    spec = ModelSpec.build("m", "v", (8, 8, 3), 1, ModelMetadata(labels=("cat", "dog"), output="sigmoid"))
    scores = scores_from_outputs(np.array([[0.8]]), spec)[0]
    assert np.allclose(scores, [0.2, 0.8])
    assert top_labels(scores, spec.labels, 5)[0]["label"] == "dog"
    single = ModelSpec.build("m", "v", (8, 8, 3), 1, ModelMetadata(labels=("hotdog",)))
    assert single.labels == ("not hotdog", "hotdog")


def test_logits_become_probabilities():
    spec = ModelSpec.build("m", "v", (8, 8, 3), 3, ModelMetadata(output="logits"))
    scores = scores_from_outputs(np.array([[1.0, 2.0, 3.0]]), spec)[0]
    assert np.isclose(scores.sum(), 1.0) and np.argmax(scores) == 2
