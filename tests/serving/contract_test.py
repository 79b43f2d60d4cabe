"""The input contract: every limit crossed in every signature of the real export (in plain TensorFlow, through our
REST server, through `predict`), and the cost of the worst requests it accepts.

Stated bound (tiny export: 12 leads, 500 Hz, 2.5-s inputs): the worst accepted request, one 120-s recording at
9999 Hz (coprime with 500: the largest polyphase bank), raises peak RSS over the loaded model's by less than 1 GB
(measured ~0.48 GB, its own 58 MB input included) and answers within 30 s (measured 2-5 s on 2 shared cores);
requests beyond a limit are refused within a second and less than 64 MB.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from plain_tf import run_plain_tf

from ecg_tfx.core import schema
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.serving import client, predictors
from ecg_tfx.serving.contract import ContractError, InputContract
from ecg_tfx.serving.rest.http import Server
from ecg_tfx.serving.servables import Model

CONTRACT = InputContract(min_seconds=2.5)
RATE = "sample_rate must lie in [50, 10000] Hz; got {} Hz"
SHORT = "each recording must last at least 2.5 s; got {} s"
LONG = "a request may hold at most 120 s of ECG (recordings x duration); got {} s"
FINITE_ECG = "ecg must hold finite numbers only (no NaN or Infinity)"
FINITE_EXAMPLE = "ecg/signal must hold finite numbers only (no NaN or Infinity)"
MAX_GROWTH_MB = 1024
MAX_SECONDS = 30.0

# serving_default requests beyond a limit: (batch, time, sample rate, bad value or None) -> the message
ECG_VIOLATIONS = {
    "rate_1_hz": ((1, 5000, 1.0, None), RATE.format(1)),  # the 500x upsampling
    "rate_999983_hz": ((1, 5000, 999983.0, None), RATE.format(999983)),  # the tens-of-GB filter bank
    "rate_just_below": ((1, 5000, 49.0, None), RATE.format(49)),
    "rate_just_above": ((1, 30000, 10001.0, None), RATE.format(10001)),
    "rate_not_whole": ((1, 5000, 499.5, None), "sample_rate must be a whole number of Hz; got 499.5 Hz"),
    "one_sample": ((1, 1, 500.0, None), SHORT.format(0.002)),
    "just_too_short": ((1, 1249, 500.0, None), SHORT.format(2.498)),
    "just_too_long": ((1, 60001, 500.0, None), LONG.format(120.002)),
    "too_long_in_a_batch": ((2, 30001, 500.0, None), LONG.format(120.004)),
    "nan": ((1, 5000, 500.0, np.nan), FINITE_ECG),
    "inf": ((1, 5000, 500.0, -np.inf), FINITE_ECG),
}
ECG_ACCEPTED = {"shortest": (1, 1250, 500.0, None), "longest": (1, 60000, 500.0, None)}


def make_ecg(batch: int, time: int, bad: float | None) -> np.ndarray:
    ecg = np.random.default_rng(0).normal(scale=0.3, size=(batch, time, 12)).astype(np.float32)
    if bad is not None:
        ecg[-1, time // 2, 3] = bad
    return ecg


def example_violations(spec: ModelSpec) -> dict[str, tuple[bytes, str]]:
    """Serialized examples that disagree with the model (each with the same signal byte count where possible)."""
    window = np.random.default_rng(1).normal(scale=0.3, size=(spec.window_samples, len(spec.leads)))
    window = window.astype(np.float32)
    leads = list(spec.leads)

    def example(signal: np.ndarray = window, names: list[str] = leads, rate: float = spec.sample_rate_hz) -> bytes:
        return schema.make_example(signal, names, rate, [], [], "r", "p", 0)

    short_signal = tf.train.Example.FromString(example())
    short_signal.features.feature[schema.SIGNAL].bytes_list.value[0] = window[:-1].tobytes()
    nan, inf = window.copy(), window.copy()
    nan[100, 2], inf[7, 0] = np.nan, np.inf
    swapped = [leads[1], leads[0], *leads[2:]]
    return {
        "other_leads": (example(names=swapped),
                        f"examples must have ecg/leads {','.join(leads)}; got {','.join(swapped)}"),
        "other_rate": (example(rate=250), "examples must have ecg/sample_rate_hz 500; got 250"),
        "other_shape": (example(window.reshape(spec.window_samples * 2, len(leads) // 2), leads[:6]),
                        "examples must have ecg/shape [5000, 12]; got [10000 6]"),
        "short_signal": (short_signal.SerializeToString(),
                         "examples must hold 5000 x 12 float32 in ecg/signal (240000 bytes); got 239952 bytes"),
        "nan_bytes": (example(nan), FINITE_EXAMPLE),
        "inf_bytes": (example(inf), FINITE_EXAMPLE),
    }, example()


# Peak RSS of a call over the RSS before it, in MB (Linux: writing 5 to clear_refs resets VmHWM, the peak).
PEAK = """
    def rss_mb(key="VmRSS"):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    def growth_mb(call):
        before = rss_mb()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        call()
        return rss_mb("VmHWM") - before
"""

PLAIN_TF_CALLS = PEAK + """
    import json, pickle, sys, time
    import numpy as np, tensorflow as tf

    def ecg(batch, time_, rate, bad):
        x = np.random.default_rng(0).normal(scale=0.3, size=(batch, time_, 12)).astype(np.float32)
        if bad is not None:
            x[-1, time_ // 2, 3] = bad
        return {"ecg": tf.constant(x), "sample_rate": tf.constant([rate] * batch, tf.float32)}

    model = tf.saved_model.load(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        cases = pickle.load(f)
    def inputs_of(signature, request):
        if signature == "serving_default":
            return ecg(*request)
        return {"examples" if signature == "serve_examples" else "inputs": tf.constant(request)}

    out = {"metadata": model.metadata()["input_contract_json"].numpy().decode()}
    model.signatures["serving_default"](**ecg(1, 5000, 500.0, None))  # every signature warm before measuring
    for name, (signature, request) in cases.items():
        if name.endswith(":good"):
            model.signatures[signature](**inputs_of(signature, request))
    for name, (signature, request) in cases.items():
        inputs = inputs_of(signature, request)
        answer, start = ["accepted"], time.perf_counter()

        def call():
            try:
                model.signatures[signature](**inputs)
            except tf.errors.InvalidArgumentError as error:
                answer[0] = error.message

        growth = growth_mb(call)
        out[name] = [answer[0], time.perf_counter() - start, growth]  # the message, seconds, MB
    print(json.dumps(out))
"""


def test_every_violation_is_invalid_argument_in_plain_tensorflow(tiny_export, tiny_spec, tmp_path):
    examples, good = example_violations(tiny_spec)
    cases = {name: ("serving_default", request) for name, (request, _) in ECG_VIOLATIONS.items()}
    cases |= {name: ("serving_default", request) for name, request in ECG_ACCEPTED.items()}
    for signature in ("serve_examples", "classify"):
        cases |= {f"{signature}:{name}": (signature, [good, serialized])
                  for name, (serialized, _) in examples.items()}
        cases[f"{signature}:good"] = (signature, [good, good])
    with open(tmp_path / "cases.pkl", "wb") as f:
        pickle.dump(cases, f)
    result = run_plain_tf(PLAIN_TF_CALLS, str(tiny_export["version"]), str(tmp_path / "cases.pkl"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert InputContract.loads(out.pop("metadata")) == CONTRACT
    expected = {name: message for name, (_, message) in ECG_VIOLATIONS.items()}
    expected |= {f"{signature}:{name}": message for signature in ("serve_examples", "classify")
                 for name, (_, message) in examples.items()}
    for name, (answer, seconds, growth_mb) in out.items():
        if name in expected:
            assert f"assertion failed: [{expected[name]}]" in answer, (name, answer)
            assert seconds < 1 and growth_mb < 64, (name, seconds, growth_mb)  # refused before any work
        else:
            assert answer == "accepted", (name, answer)


WORST_REQUEST = PEAK + """
    import json, sys, time
    import numpy as np, tensorflow as tf

    rate, seconds = float(sys.argv[2]), float(sys.argv[3])
    model = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    model(ecg=tf.ones([1, 5000, 12]), sample_rate=tf.constant([500.0]))  # a served model: loaded and warm
    ecg = np.random.default_rng(0).standard_normal((1, int(rate * seconds), 12), dtype=np.float32)  # 1 mV
    start = time.perf_counter()
    growth = growth_mb(lambda: model(ecg=tf.constant(ecg), sample_rate=tf.constant([rate]))["probabilities"].numpy())
    print(json.dumps({"seconds": time.perf_counter() - start, "growth_mb": growth, "served_mb": rss_mb()}))
"""


@pytest.mark.parametrize("rate", [9999, 10000, 50])
def test_the_worst_accepted_requests_stay_within_the_stated_bound(tiny_export, tmp_path, rate):
    """Peak RSS growth over a loaded, warm model, counting the request's own input (57.6 MB at 10 kHz)."""
    result = run_plain_tf(WORST_REQUEST, str(tiny_export["version"]), str(rate), str(CONTRACT.max_request_seconds),
                          cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{rate} Hz x {CONTRACT.max_request_seconds:g} s: {cost}")
    assert cost["growth_mb"] < MAX_GROWTH_MB and cost["seconds"] < MAX_SECONDS, cost


def test_our_rest_server_answers_400_with_the_message_and_keeps_serving(tiny_export, tiny_spec):
    examples, good = example_violations(tiny_spec)
    model = Model.load("ecg", str(tiny_export["version"].parent))
    with Server({"ecg": model}) as server:
        rest = client.RestClient(server.url, "ecg")
        for name in ("rate_1_hz", "rate_999983_hz", "rate_not_whole", "one_sample", "just_too_long", "nan", "inf"):
            (batch, time, rate, bad), message = ECG_VIOLATIONS[name]
            with pytest.raises(client.ServingError) as error:
                rest.predict(make_ecg(batch, time, bad), rate)
            assert error.value.status == 400 and message in error.value.message, name
        for name, (serialized, message) in examples.items():
            for call in (rest.predict_examples, rest.classify):
                with pytest.raises(client.ServingError) as error:
                    call([good, serialized])
                assert error.value.status == 400 and message in error.value.message, name
        assert rest.predict(make_ecg(1, 1250, None), 500)["probabilities"].shape == (1, len(tiny_spec.labels))
        assert len(rest.classify([good])) == 1


@pytest.mark.parametrize("kind", ["saved_model", "tflite"])
def test_predict_refuses_with_the_same_messages(tiny_export, kind):
    path = tiny_export["version"] / "tflite" / "model_float32.tflite" if kind == "tflite" else tiny_export["version"]
    predictor = predictors.load_predictor(str(path))
    assert predictor.contract == CONTRACT
    for name in ("rate_1_hz", "rate_999983_hz", "rate_just_below", "rate_just_above", "rate_not_whole", "one_sample",
                 "just_too_short", "just_too_long", "nan", "inf"):
        (_, time, rate, bad), message = ECG_VIOLATIONS[name]
        with pytest.raises(ContractError) as error:
            predictor(make_ecg(1, time, bad)[0], rate)
        assert str(error.value) == message, name
    assert predictor(make_ecg(1, 1250, None)[0], 500)["probabilities"].shape == (len(predictor.labels),)


def test_the_tflite_wrapper_refuses_non_finite_windows(tiny_export):
    runner = predictors.TFLitePredictor(str(tiny_export["version"] / "tflite" / "model_float32.tflite")).runner
    with pytest.raises(ContractError, match=re.escape(FINITE_ECG)):
        runner(make_ecg(1, 5000, np.nan))


def test_predict_cli_prints_the_refusal_and_exits_non_zero(tiny_export, tiny_spec, tmp_path):
    np.save(tmp_path / "short.npy", make_ecg(1, 500, None)[0])
    result = subprocess.run([sys.executable, "-m", "ecg_tfx.predict", f"--model={tiny_export['version']}",
                             "--sample_rate=500", "--units=mV", "--leads=standard12", str(tmp_path / "short.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"error: {tmp_path / 'short.npy'}: {SHORT.format(1)}" in result.stderr
