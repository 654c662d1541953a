"""The TensorFlow tutorial's greedy decoding loop (tensorflow/text
`docs/tutorials/transformer.ipynb`, class `Translator`): no cache, the whole
transformer re-runs on the growing prefix at every step, so step t costs O(t)
positions of every layer and the loop O(n^2).

Kept as the tutorial writes it (a `tf.TensorArray` of tokens, stacked and
transposed before every call, the last position's logits, `break` at [END]),
inside `tf.function` as the tutorial's `ExportTranslator` runs it. Three
changes, none affecting the work per step: a batch of rows instead of one (the
`break` waits for every row), our model's dict inputs, and `best_token` (argmax
without the padding id, as kerasformer decodes) instead of a plain argmax, so the
tokens can be compared with ours.
"""

import tensorflow as tf

from kerasformer.decoding import best_token


def tutorial_greedy_decode(model, start_id, end_id, max_length):
    """`Translator.__call__` of the tutorial, compiled with `tf.function`.

    Args:
        model: a `kerasformer.build_seq2seq` model (any model with its inputs).
        start_id, end_id: the ids of [START] and [END] (an end id the model never
            predicts forces `max_length` steps).
        max_length: the number of steps (a Python int).

    Returns:
        A function int32 `(batch, source_length)` -> int32 `(batch, t)` tokens
        after [START], t <= max_length.
    """

    @tf.function
    def translate(encoder_input):
        batch = tf.shape(encoder_input)[0]
        output_array = tf.TensorArray(dtype=tf.int32, size=0, dynamic_size=True)
        output_array = output_array.write(0, tf.fill([batch], start_id))
        for i in tf.range(max_length):
            output = tf.transpose(output_array.stack())
            predictions = model({"encoder_tokens": encoder_input, "decoder_tokens": output}, training=False)
            predictions = predictions[:, -1, :]  # (batch, vocab_size)
            predicted_id = best_token(predictions)
            output_array = output_array.write(i + 1, predicted_id)
            if tf.reduce_all(predicted_id == end_id):
                break
        return tf.transpose(output_array.stack())[:, 1:]

    return translate
