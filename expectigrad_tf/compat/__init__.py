"""Expectigrad for TensorFlow's compatibility APIs: ``expectigrad_tf.compat.v1``
(a ``tf.compat.v1.train.Optimizer``)."""
