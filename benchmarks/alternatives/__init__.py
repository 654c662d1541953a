"""Re-implementations of the alternatives our benchmarks compare against, each
following its published structure: the TensorFlow tutorial's uncached decode loop
(`tutorial_loop`) and a seq2seq model assembled from keras-hub's layers with
keras-hub's cached greedy decoding (`keras_hub_layers`)."""
