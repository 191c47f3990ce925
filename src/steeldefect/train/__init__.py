"""Training: the model, the tf.data input pipeline, caches, distribution and the degenerate-run checks."""
