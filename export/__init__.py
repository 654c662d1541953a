"""Export: the SavedModel with its tf.function decoding loop, and serving."""
