"""Models: where they are stored, how they are cached, loaded, kept and replaced.

* `store/`: model stores (a directory, S3) and publishing into them;
* `cache`: the bounded disk cache downloads go to (safe to share and kill);
* `runtime/`: engines that run a loaded model (LiteRT, TensorFlow) and the converter;
* `modelspec`: a model's input, labels and output, from its files;
* `registry`: which models exist and are loaded, built from `loading`,
  `residency`, `refresh`, `warmset` and `names`.

Nothing is imported here, so `import webapp.models.modelspec` stays light.
"""
