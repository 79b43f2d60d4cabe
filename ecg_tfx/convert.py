"""Converts ECG records into sharded TFRecords plus a manifest.

    python -m ecg_tfx.convert --output_dir=workspace/tfrecords/synthetic            # synthetic default
    python -m ecg_tfx.convert --source=ptb --input_dir=ptbdb --output_dir=workspace/tfrecords/ptb
    python -m ecg_tfx.convert --runner=beam --output_dir=... \\
        --beam_args="--direct_num_workers=2 --direct_running_mode=multi_processing"    # in-process FnApiRunner
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging

from ecg_tfx.core import storage
from ecg_tfx.data import conversion, conversion_flags
from ecg_tfx.data.sources import SourceError

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where shards and manifest.json go (local, gs:// or s3://).")
flags.mark_flag_as_required("output_dir")
_RUNNER = flags.DEFINE_enum("runner", "local", ["local", "beam"],
                            "local: worker processes on this machine; beam: an Apache Beam pipeline "
                            "(pip install apache-beam[tfrecord]), same output.")
_BEAM_ARGS = flags.DEFINE_string("beam_args", "", "Beam pipeline options for --runner=beam, e.g. "
                                 "'--runner=DataflowRunner --project=... --extra_package=<ecg_tfx wheel>'.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = conversion_flags.config_from_flags()
    try:
        if _RUNNER.value == "beam":
            from ecg_tfx.data import beam_conversion

            manifest = beam_conversion.run(config, _OUTPUT_DIR.value, shlex.split(_BEAM_ARGS.value),
                                           conversion_flags.OVERWRITE.value)
        else:
            manifest = conversion.run(config, _OUTPUT_DIR.value, conversion_flags.NUM_WORKERS.value,
                                      conversion_flags.OVERWRITE.value)
    except (SourceError, conversion.ConversionError) as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")
    print(conversion.summary(manifest))
    print(f"wrote {_OUTPUT_DIR.value}/manifest.json")


if __name__ == "__main__":
    storage.run_app(main)
