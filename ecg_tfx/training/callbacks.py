"""Keras callbacks the trainer needs beyond Keras's own."""

from __future__ import annotations

import keras


class CSVLogger(keras.callbacks.CSVLogger):
    """Keras's CSVLogger, able to close a tf.io.gfile file (s3://, gs://): Keras asks it for `.closed`."""

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.csv_file is not None:
            self.csv_file.close()
            self.csv_file = None
        self.writer = None


class BestCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint(save_best_only) that ignores the first epochs, like EarlyStopping(start_from_epoch)."""

    def __init__(self, *args, start_from_epoch: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_from_epoch = start_from_epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch >= self.start_from_epoch:
            super().on_epoch_end(epoch, logs)
