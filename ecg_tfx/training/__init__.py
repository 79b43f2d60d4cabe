"""Training: the TrainConfig, the trainer library, tf.distribute strategies and precision, Keras callbacks."""
