"""Tests for ecg_tfx.preprocessing: filter quality on a real ECG, parity with scipy, graph/serving safety."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
from graph_ops import stock_op_types, tflite_op_names

from ecg_tfx.dsp.preprocessing import PreprocessConfig, fir_taps, preprocess

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
RATE = 500




def scipy_reference(x: np.ndarray, taps: np.ndarray) -> tuple[np.ndarray, float]:
    """The same FIR in numpy/scipy: odd-reflect-pad time by half the taps (as filtfilt), then convolve.

    Also returns the padded signal's peak magnitude: the scale that float32 rounding is relative to.
    """
    half = (len(taps) - 1) // 2
    padded = np.pad(x, [(0, 0), (half, half), (0, 0)], mode="reflect", reflect_type="odd")
    return scipy.signal.convolve(padded, taps[None, :, None], mode="valid"), float(np.abs(padded).max())


@pytest.fixture(scope="module")
def ptb_window() -> np.ndarray:
    """10 s of patient001/s0010_re's 12 standard leads (mV), resampled 1000 -> 500 Hz: [5000, 12]."""
    wfdb = pytest.importorskip("wfdb")
    path = DATA / "ptbdb" / "patient001" / "s0010_re"
    if not path.with_suffix(".hea").exists():
        pytest.skip(f"real data not found at {path} (needs ../shared/data beside the repo)")
    record = wfdb.rdrecord(str(path), channels=list(range(12)), sampfrom=5000, sampto=15000)
    return scipy.signal.resample_poly(record.p_signal, 1, 2, axis=0)


def test_baseline_wander_removed_and_qrs_kept(ptb_window: np.ndarray) -> None:
    t = np.arange(len(ptb_window)) / RATE
    wander = 1.5 * np.sin(2 * np.pi * 0.1 * t + 0.3)[:, None] * np.ones((1, 12))
    config = PreprocessConfig(RATE, highpass_hz=0.5, standardize=False)
    clean = preprocess(ptb_window[None], config).numpy()[0]
    drifted = preprocess((ptb_window + wander)[None], config).numpy()[0]

    residual = drifted - clean  # the filter is linear: this is what is left of the wander
    attenuation_db = 10 * np.log10(np.mean(wander**2) / np.mean(residual**2))
    assert attenuation_db >= 20

    # QRS kept: same R peaks (lead II) as a standard scipy zero-phase Butterworth high-pass of the clean ECG.
    sos = scipy.signal.butter(2, 0.5, "highpass", fs=RATE, output="sos")
    reference = scipy.signal.sosfiltfilt(sos, ptb_window, axis=0)
    peaks, _ = scipy.signal.find_peaks(reference[:, 1], height=0.5 * reference[:, 1].max(), distance=RATE // 3)
    assert len(peaks) >= 8  # ~10 beats in 10 s
    np.testing.assert_allclose(drifted[peaks, 1], reference[peaks, 1], rtol=0.1)
    for lead in range(12):
        assert np.corrcoef(drifted[:, lead], reference[:, lead])[0, 1] > 0.95


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(RATE, standardize=False),
        PreprocessConfig(RATE, lowpass_hz=40, powerline_hz=50, standardize=False),
        PreprocessConfig(RATE, highpass_hz=None, powerline_hz=60, standardize=False),
        PreprocessConfig(100, standardize=False),
    ],
    ids=["highpass", "band+notch", "notch-only", "100Hz"],
)
@pytest.mark.parametrize("length", [5000, 700, 3])  # 700 and 3: shorter than the pad at 500 Hz
@pytest.mark.parametrize("method", ["fft", "rfft_only", "direct"])  # rfft_only: as TFLite computes it
def test_equals_scipy_reference(config: PreprocessConfig, length: int, method: str) -> None:
    x = np.random.default_rng(length).normal(size=(2, length, 3)) + 2.0  # offset: edge handling matters
    expected, scale = scipy_reference(x, fir_taps(config))
    tolerance = 5e-6 if method == "direct" else 1e-6  # direct: float32 sums of ~2000 products
    np.testing.assert_allclose(preprocess(x, config, method).numpy(), expected, atol=tolerance * scale)


def ptbxl_windows(ptbxl_dir: pathlib.Path, rate: int, count: int = 8) -> np.ndarray:
    """The first `count` PTB-XL records' 10 s, 12 leads at `rate` (500 or 100 Hz), in mV: [count, 10 rate, 12]."""
    wfdb = pytest.importorskip("wfdb")
    folder, suffix = ("records500", "hr") if rate == 500 else ("records100", "lr")
    return np.stack([wfdb.rdrecord(str(ptbxl_dir / folder / "00000" / f"{i:05d}_{suffix}")).p_signal
                     for i in range(1, count + 1)]).astype(np.float32)


@pytest.mark.parametrize("config", [PreprocessConfig(500), PreprocessConfig(100),
                                    PreprocessConfig(500, lowpass_hz=40, powerline_hz=50)],
                         ids=["500Hz", "100Hz", "500Hz-band+notch"])
def test_tflite_builtin_preprocessing_equals_training_on_ptbxl(ptbxl_dir: pathlib.Path,
                                                               config: PreprocessConfig) -> None:
    """What the TFLite export runs (method 'rfft_only' in the TFLite interpreter) is training's preprocessing."""
    windows = ptbxl_windows(ptbxl_dir, int(config.sample_rate_hz))
    function = tf.function(lambda ecg: preprocess(ecg, config, "rfft_only"),
                           input_signature=[tf.TensorSpec(windows.shape, tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content = converter.convert()
    ops = tflite_op_names(content)
    assert "RFFT2D" in ops and "CONV_2D" not in ops  # filtered by FFT, not by a ~1000-tap convolution
    assert not [op for op in ops if op.startswith("CUSTOM")]  # no Flex or custom op
    interpreter = tf.lite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], windows)
    interpreter.invoke()
    filtered = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    training = preprocess(windows, config).numpy()  # rfft/irfft: the tf.data pipeline and the SavedModel
    np.testing.assert_allclose(filtered, training, rtol=0, atol=1e-4)  # standardized units (per-lead sd = 1)


def test_rfft_only_needs_a_static_time_length() -> None:
    function = tf.function(lambda x: preprocess(x, PreprocessConfig(RATE), "rfft_only"))
    with pytest.raises(ValueError, match="static time length"):
        function.get_concrete_function(tf.TensorSpec([1, None, 12], tf.float32))


def test_notch_and_lowpass_attenuate_interference() -> None:
    t = np.arange(5000) / RATE
    mains = np.sin(2 * np.pi * 50 * t)[None, :, None]
    emg = np.sin(2 * np.pi * 90 * t)[None, :, None]
    config = PreprocessConfig(RATE, lowpass_hz=40, powerline_hz=50, standardize=False)
    for tone in (mains, emg):
        out = preprocess(tone, config).numpy()[:, 1200:-1200]  # beyond the filter's half-length from the edges
        assert 20 * np.log10(np.abs(out).max()) < -30


def test_standardizes_each_lead_and_flat_lead_is_finite_zero() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(3.0, 2.0, 2000), np.full(2000, 0.7), np.zeros(2000)], axis=-1)[None]
    out = preprocess(x, PreprocessConfig(RATE)).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, :, 1:], 0.0, atol=1e-4)  # float32 rounding of the mean, in std units
    np.testing.assert_allclose(out[0, :, 0].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out[0, :, 0].std(), 1.0, rtol=1e-4)


@pytest.mark.parametrize("leads", [1, 3, 12])
def test_graph_mode_with_unknown_batch_and_time(leads: int) -> None:
    config = PreprocessConfig(RATE, lowpass_hz=40)
    fn = tf.function(lambda x: preprocess(x, config), input_signature=[tf.TensorSpec([None, None, leads])])
    rng = np.random.default_rng(leads)
    for batch, length in [(1, 5000), (4, 1234)]:
        x = rng.normal(size=(batch, length, leads)).astype(np.float32)
        out = fn(x)
        assert out.shape == (batch, length, leads)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), preprocess(x, config).numpy(), atol=1e-5)


def test_only_stock_ops() -> None:
    config = PreprocessConfig(RATE, lowpass_hz=40, powerline_hz=50)
    fn = tf.function(lambda x: preprocess(x, config))
    types = stock_op_types(fn.get_concrete_function(tf.TensorSpec([None, None, None], tf.float32)))
    assert {"RFFT", "IRFFT"} <= types
    assert not [op for op in types if not hasattr(tf.raw_ops, op)]


def test_same_result_after_savedmodel_round_trip(tmp_path: pathlib.Path) -> None:
    config = PreprocessConfig(RATE, lowpass_hz=40)
    module = tf.Module()
    module.run = tf.function(lambda x: preprocess(x, config), input_signature=[tf.TensorSpec([None, None, 12])])
    tf.saved_model.save(module, str(tmp_path))
    x = np.random.default_rng(1).normal(size=(2, 3000, 12)).astype(np.float32)
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.run(x).numpy(), module.run(x).numpy())


def test_config_json_round_trip_and_validation() -> None:
    config = PreprocessConfig(250.0, highpass_hz=0.67, lowpass_hz=40.0, powerline_hz=60.0, standardize=False)
    assert PreprocessConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError):
        PreprocessConfig(100.0, lowpass_hz=60.0)  # above Nyquist
    with pytest.raises(ValueError):
        PreprocessConfig(500.0, highpass_hz=5.0, lowpass_hz=1.0)
    with pytest.raises(TypeError):
        PreprocessConfig.from_json({**config.to_json(), "unknown": 1})
    assert fir_taps(PreprocessConfig(500.0, highpass_hz=None)) is None
