"""A local REST server that speaks TF Serving's REST API for our SavedModel exports (no Docker needed).

It is generic over SavedModels like TF Serving: every integer folder under `--model_base_path` is loaded (the
highest is the default), and signatures, dtypes and shapes are read from each loaded model. Endpoints, request and
response bodies, error bodies (`{"error": "..."}`) and status codes follow TF Serving's `http_rest_api_handler.cc`
and `json_tensor.cc`, so the same requests work against the `tensorflow/serving` container:

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map, TF Serving's JSON shape
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     {"instances": ...} rows or {"inputs": ...} columns
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:classify    {"examples": [{feature: value|list}, ...]}

Deliberate differences: non-finite float inputs (NaN, Infinity) are parsed as TF Serving parses them but then
refused with 400, since no ECG holds them; bodies over `--max_request_bytes` get 413; paths outside /v1/ get a JSON
404; long JSON values quoted in error messages are shortened. Requests run in parallel on a thread pool (one
model call per request; TF Serving's --enable_batching merges them instead).

Built on aiohttp: a maintained, production-grade asyncio server whose event loop keeps accepting connections while
model calls run on worker threads, with a built-in request body limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import json
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from aiohttp import web
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from ecg_tfx.core import compat

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_QUOTED_JSON = 200  # characters of a request value quoted back in an error message

# TF Serving's request paths (http_rest_api_util.cc), matched case-insensitively as it does.
_PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.I)
_INT64_MAX = 2**63 - 1

# tf.errors codes -> HTTP status, as TF Serving's http_server.cc maps them.
_HTTP_STATUS = {
    tf.errors.CANCELLED: 499, tf.errors.UNKNOWN: 500, tf.errors.INVALID_ARGUMENT: 400,
    tf.errors.DEADLINE_EXCEEDED: 504, tf.errors.NOT_FOUND: 404, tf.errors.ALREADY_EXISTS: 409,
    tf.errors.PERMISSION_DENIED: 403, tf.errors.RESOURCE_EXHAUSTED: 429, tf.errors.FAILED_PRECONDITION: 400,
    tf.errors.ABORTED: 409, tf.errors.OUT_OF_RANGE: 400, tf.errors.UNIMPLEMENTED: 501, tf.errors.INTERNAL: 500,
    tf.errors.UNAVAILABLE: 503, tf.errors.DATA_LOSS: 500, tf.errors.UNAUTHENTICATED: 401,
}

class ServingError(Exception):
    """A request failure carrying the HTTP status TF Serving would answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def invalid_argument(message: str) -> ServingError:
    return ServingError(400, message)


def not_found(message: str) -> ServingError:
    return ServingError(404, message)


# --- Loaded models ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version: its SignatureDefs (as saved) and the callable signatures."""

    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    functions: Mapping[str, Any]  # signature name -> ConcreteFunction taking keyword tensors

    @classmethod
    def load(cls, path: str, version: int) -> Servable:
        saved_model = saved_model_pb2.SavedModel()
        with tf.io.gfile.GFile(tf.io.gfile.join(path, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        meta_graph = next((m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags), None)
        if meta_graph is None:
            raise ValueError(f"{path} has no MetaGraph tagged 'serve'")
        loaded = tf.saved_model.load(path, tags=["serve"])
        return cls(version, path, dict(meta_graph.signature_def), dict(loaded.signatures))


@dataclasses.dataclass(frozen=True)
class Model:
    """All loaded versions of one model plus its version labels."""

    name: str
    servables: Mapping[int, Servable]
    labels: Mapping[str, int]

    @classmethod
    def load(cls, name: str, base_path: str, labels: Mapping[str, int] | None = None) -> Model:
        """Loads every integer version folder under `base_path`; labels must name loaded versions."""
        if not tf.io.gfile.isdir(base_path):
            raise FileNotFoundError(f"model base path {base_path} does not exist")
        versions = sorted(int(n.rstrip("/")) for n in tf.io.gfile.listdir(base_path) if n.rstrip("/").isdigit())
        if not versions:
            raise FileNotFoundError(f"{base_path} holds no integer version folders")
        servables = {}
        for version in versions:
            servables[version] = Servable.load(tf.io.gfile.join(base_path, str(version)), version)
            logging.info("loaded %s version %d", name, version)
        labels = dict(labels or {})
        for label, version in labels.items():
            if version not in servables:
                raise ValueError(f"version label {label!r} points at version {version}, which is not loaded "
                                 f"(loaded: {versions})")
        return cls(name, servables, labels)

    def servable(self, version: int | None, label: str | None) -> Servable:
        """The requested version (a number, a label or the latest), with TF Serving's error for a missing one."""
        if label is not None:
            if label not in self.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            return self.servables[max(self.servables)]
        if version not in self.servables:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return self.servables[version]


def parse_version_labels(text: str) -> dict[str, int]:
    """'stable:1,canary:2' -> {'stable': 1, 'canary': 2}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, _, version = item.partition(":")
        if not re.fullmatch(r"[^/:]+", label) or not version.isdigit():
            raise ValueError(f"bad version label {item!r}; expected label:version, e.g. stable:1")
        labels[label] = int(version)
    return labels


# --- JSON -> tensors (json_tensor.cc) ---------------------------------------------------------------------------


def _quote(value: Any) -> str:
    """A JSON value as quoted in error messages, shortened when long."""
    text = json.dumps(value)
    return text if len(text) <= MAX_QUOTED_JSON else text[:MAX_QUOTED_JSON] + "...(truncated)"


def _json_type(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value).replace("None", "Null")
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(f"JSON Value: {_quote(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _lossless(value: int | float, dtype: np.dtype) -> bool:
    """Whether a JSON number fits the float type without loss (non-finite values pass, as in TF Serving)."""
    if isinstance(value, int):
        return abs(value) <= 2 ** np.finfo(dtype).nmant * 2 - 1
    return not math.isfinite(value) or abs(value) <= float(np.finfo(dtype).max)


def _converter(dtype: int) -> tuple[np.dtype, Callable[[Any], Any]]:
    """numpy dtype and a JSON-scalar converter for a TF DataType enum, raising TF Serving's type errors."""
    name = types_pb2.DataType.Name(dtype)
    tf_name = name.removeprefix("DT_").lower()  # TF's DataTypeString: 'float', 'int64', 'string'

    def type_error(value: Any) -> ServingError:
        return invalid_argument(f"JSON Value: {_quote(value)} Type: {_json_type(value)} is not of expected type: "
                                f"{tf_name}")

    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        np_dtype = np.dtype(np.float64 if dtype == types_pb2.DT_DOUBLE else np.float32)

        def to_float(value: Any) -> float:
            if type(value) not in (int, float):
                raise type_error(value)
            if not _lossless(value, np_dtype):
                raise invalid_argument(f"Cannot convert JSON value: {_quote(value)} to {tf_name} without loss of "
                                       "precision.")
            return value

        return np_dtype, to_float
    if dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_UINT8,
                 types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        np_dtype = np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
        info = np.iinfo(np_dtype)

        def to_int(value: Any) -> int:
            if type(value) is not int or not info.min <= value <= info.max:
                raise type_error(value)
            return value

        return np_dtype, to_int
    if dtype == types_pb2.DT_BOOL:
        def to_bool(value: Any) -> bool:
            if type(value) is not bool:
                raise type_error(value)
            return value

        return np.dtype(bool), to_bool
    if dtype == types_pb2.DT_STRING:
        def to_bytes(value: Any) -> bytes:
            if isinstance(value, str):
                return value.encode()
            if isinstance(value, dict):
                return _decode_b64(value)
            raise type_error(value)

        return np.dtype(object), to_bytes

    def unsupported(value: Any) -> None:
        raise ServingError(501, f"Conversion of JSON Value: {_quote(value)} to type: {name}")

    return np.dtype(object), unsupported


def _dense_shape(value: Any) -> list[int]:
    """The shape implied by the first element at every nesting level (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], convert: Callable[[Any], Any], out: list) -> None:
    """Appends the leaves of a nested list to `out`, checking it is dense (FillTensorProto)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(f"JSON Value: {_quote(value)} found at incorrect level: {level + 1} in the JSON "
                                   f"DOM. Expected at level: {rank}")
        out.append(convert(value))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
                               f"{shape[level]}")
    if level == rank - 1 and not any(isinstance(v, list) for v in value):
        out.extend(convert(v) for v in value)  # fast path for the innermost lists
        return
    for item in value:
        _fill(item, level + 1, shape, convert, out)


_FLOAT_TYPES = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16)


def _leaf_types(value: list) -> set[type]:
    """The Python types of a nested list's leaves, gathered per innermost list at C speed."""
    if value and isinstance(value[0], list):
        return set().union(*(_leaf_types(item) if isinstance(item, list) else {type(item)} for item in value))
    return set(map(type, value))


def _numeric_fast_path(value: Any, dtype: int, shape: list[int]) -> np.ndarray | None:
    """The float tensor in one numpy call when every leaf is a plain number of an exact dense shape, else None.

    An ECG request is tens of thousands of floats: converting them one by one holds the GIL for most of a
    request. Anything unusual (bools, strings, ragged lists, values that may lose precision) goes the slow,
    exact path, which also words the errors as TF Serving does.
    """
    if dtype not in _FLOAT_TYPES or not shape or not _leaf_types(value) <= {int, float}:
        return None  # numpy would silently turn true/false into 1/0
    try:
        array = np.array(value)
    except ValueError:  # ragged
        return None
    if array.dtype.kind not in "if" or list(array.shape) != shape:
        return None
    np_dtype = np.dtype(np.float64 if dtype == types_pb2.DT_DOUBLE else np.float32)
    magnitude = np.abs(array[np.isfinite(array)]) if array.dtype.kind == "f" else np.abs(array)
    if magnitude.size and magnitude.max() > 2 ** np.finfo(np_dtype).nmant * 2 - 1:
        return None  # large values: let the exact per-value check decide
    return array.astype(np_dtype)


def tensor_from_json(value: Any, dtype: int) -> np.ndarray:
    """A dense nested JSON list (or scalar, or b64 object) -> numpy array of the TF DataType `dtype`."""
    np_dtype, convert = _converter(dtype)
    shape = _dense_shape(value)
    fast = _numeric_fast_path(value, dtype, shape)
    if fast is not None:
        return fast
    leaves: list = []
    _fill(value, 0, shape, convert, leaves)
    array = np.empty(len(leaves), dtype=np_dtype)
    array[:] = leaves
    return array.reshape(shape)


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object; NaN and Infinity are accepted, as by TF Serving's parser."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_quote(doc)} Is not object")
    return doc


def signature_name_of(doc: dict) -> str:
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {_quote(doc)} not formatted correctly. 'signature_name' key must be a "
                               "string value.")
    return name


def _instances_to_tensors(instances: list, infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    """Row format: one item per batch element, objects keyed by input name when there are several inputs."""
    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as multiple input tensors "
                               "required as per tensorinfo_map")
    named = is_object(instances[0])
    rows: dict[str, list[np.ndarray]] = {}

    def add(index: int, name: str, value: Any, context: str) -> None:
        try:
            if name not in infos:
                raise invalid_argument(f"JSON object: does not have named input: {name}")
            tensor = tensor_from_json(value, infos[name].dtype)
            if name in rows and rows[name][0].shape != tensor.shape:
                first = rows[name][0]
                if first.size != tensor.size:
                    raise invalid_argument(f"Expecting tensor size: {first.size} but got: {tensor.size}")
                raise invalid_argument(f"Expecting shape [{','.join(map(str, first.shape))}] but got: "
                                       f"[{','.join(map(str, tensor.shape))}]")
        except ServingError as error:
            if error.status != 400:
                raise
            raise invalid_argument(f"Failed to process element: {index}{context} of 'instances' list. Error: "
                                   f"INVALID_ARGUMENT: {error.message}") from None
        rows.setdefault(name, []).append(tensor)

    for index, item in enumerate(instances):
        if named:
            if not is_object(item):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for name, value in item.items():
                add(index, name, value, f" key: {name}")
            if set(item) != set(infos):
                raise invalid_argument(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                       f"{_quote(item)} must only have keys: {','.join(sorted(infos))}")
        else:
            if is_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            add(index, next(iter(infos)), item, "")
    return {name: np.stack(values) for name, values in rows.items()}


def _inputs_to_tensors(inputs: Any, infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    """Columnar format: one value per input (a bare value when there is just one input); extra keys are ignored."""
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as multiple input tensors "
                                   "required as per tensorinfo_map")
        name, info = next(iter(infos.items()))
        return {name: tensor_from_json(inputs, info.dtype)}
    tensors = {}
    for name, info in infos.items():
        if name not in inputs:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = tensor_from_json(inputs[name], info.dtype)
    return tensors


def predict_inputs(doc: dict, infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a predict request and whether it used the row ('instances') format."""
    if "instances" in doc and "inputs" in doc:
        raise invalid_argument(f"JSON Value: {_quote(doc)} Not formatted correctly expecting only one of 'inputs' or "
                               "'instances' keys to exist ")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {_quote(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {_quote(doc)} No values in 'instances' array")
        return _instances_to_tensors(instances, infos), True
    if "inputs" in doc:
        return _inputs_to_tensors(doc["inputs"], infos), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _feature_from_json(name: str, content: Any) -> tf.train.Feature:
    """One tf.Example feature from a JSON value or list: ints/bools -> int64, decimals -> float, text/b64 -> bytes."""
    feature = tf.train.Feature()
    kinds = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}

    def add(kind: str, value: Any) -> None:
        current = feature.WhichOneof("kind")
        if current not in (None, kind):
            raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kinds[current]}")
        getattr(feature, kind).value.append(value)

    for value in content if isinstance(content, list) else [content]:
        if isinstance(value, bool):
            add("int64_list", int(value))
        elif isinstance(value, int):
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
            add("int64_list", value)
        elif isinstance(value, float):
            if not _lossless(value, np.dtype(np.float32)):
                raise invalid_argument(f"Cannot convert JSON value: {_quote(value)} to float without loss of "
                                       "precision.")
            add("float_list", value)
        elif isinstance(value, str):
            add("bytes_list", value.encode())
        elif _is_b64(value):
            add("bytes_list", _decode_b64(value))
        else:
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    return feature


def _example_from_json(value: Any) -> tf.train.Example:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    example = tf.train.Example()
    for name, content in value.items():
        example.features.feature[name].CopyFrom(_feature_from_json(name, content))
    return example


def classify_examples(doc: dict) -> list[bytes]:
    """Serialized tf.Examples of a classify request; `context` features are merged into every example."""
    context = compat.serialize(_example_from_json(doc["context"])) if "context" in doc else b""
    examples = doc.get("examples")
    if examples is None:
        raise invalid_argument(f"JSON Value: {_quote(doc)} When method is classify, key 'examples' is expected and "
                               "was not found")
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {_quote(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {_quote(doc)} 'examples' value is an empty array")
    # Concatenated serialized protos parse as their merge, which is how TF Serving applies a context.
    return [context + compat.serialize(_example_from_json(example)) for example in examples]


# --- tensors -> JSON --------------------------------------------------------------------------------------------


def tensor_to_json(array: np.ndarray, as_bytes: bool = False) -> Any:
    """A numpy array as nested JSON values: float32 in its shortest round-trip form, strings as UTF-8 or b64."""
    if array.dtype == np.float32:
        array = array.astype(str).astype(np.float64)  # '0.2', not 0.20000000298023224, as TF Serving writes it
    elif array.dtype == object:
        encode = ((lambda b: {"b64": base64.b64encode(b).decode()}) if as_bytes
                  else (lambda b: b.decode("utf-8", errors="replace")))
        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    return array.tolist()


def predict_response(outputs: Mapping[str, np.ndarray], row: bool) -> dict:
    """TF Serving's predict body: {'predictions': rows} for row requests, {'outputs': columns} otherwise."""
    names = sorted(outputs)
    as_bytes = {name: name.endswith("_bytes") for name in names}
    if not row:
        if len(names) == 1:
            return {"outputs": tensor_to_json(outputs[names[0]], as_bytes[names[0]])}
        return {"outputs": {name: tensor_to_json(outputs[name], as_bytes[name]) for name in names}}
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        size = outputs[name].shape[0]
        if size < 1:
            raise invalid_argument(f"Tensor name: {name} has invalid batch size: {size}")
        if batch is not None and size != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}")
        batch = size
    columns = {name: tensor_to_json(outputs[name], as_bytes[name]) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(batch)]}


# --- The model calls --------------------------------------------------------------------------------------------


def _check_inputs(tensors: Mapping[str, np.ndarray], function: Any, signature: str) -> None:
    """Refuses inputs whose shape the signature cannot take, and non-finite float values."""
    specs = function.structured_input_signature[1]
    for name, array in tensors.items():
        spec = specs[name]
        if not spec.shape.is_compatible_with(array.shape):
            expected = [-1 if d is None else d for d in spec.shape.as_list()]
            raise invalid_argument(f"input '{name}' of signature '{signature}' must have shape {expected} "
                                   f"(-1: any size), got {list(array.shape)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise invalid_argument(f"input '{name}' holds {bad} non-finite value(s) (NaN or Infinity); send finite "
                                   "numbers (e.g. interpolate or zero gaps in an ECG before sending it)")


def _op_error_message(error: tf.errors.OpError) -> str:
    """The kernel's own message, as TF Serving reports it, without eager mode's 'Graph execution error' wrapper."""
    message = error.message.split("<stack traces unavailable>\n", 1)[-1]
    return re.sub(r"\s*\[Op:__inference_\w+\]$", "", message).strip()


def run_signature(servable: Servable, signature: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Calls a signature; TensorFlow errors become ServingErrors with TF Serving's status codes."""
    function = servable.functions.get(signature)
    if function is None:
        raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
    _check_inputs(tensors, function, signature)
    try:
        outputs = function(**{name: tf.constant(array) for name, array in tensors.items()})
    except tf.errors.OpError as error:
        raise ServingError(_HTTP_STATUS.get(error.error_code, 500), _op_error_message(error)) from None
    except (TypeError, ValueError) as error:  # arguments the signature's binding refuses
        raise invalid_argument(str(error)) from None
    return {name: value.numpy() for name, value in outputs.items()}


def classify(servable: Servable, signature: str, examples: Sequence[bytes]) -> dict:
    """TF Serving's Classify on a classify signature: {'results': [[[label, score], ...] per example]}."""
    name = signature or DEFAULT_SIGNATURE
    signature_def = servable.signature_defs.get(name)
    if signature_def is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if signature_def.method_name != CLASSIFY_METHOD:
        raise invalid_argument(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: "
                               f"{signature_def.method_name}")
    if list(signature_def.inputs) != ["inputs"]:
        raise invalid_argument("Expected one input Tensor named 'inputs'.")
    outputs = run_signature(servable, name, {"inputs": np.array(examples, dtype=object)})
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise invalid_argument('Expected classification signature outputs to contain at least one of "classes" or '
                               '"scores".')
    for key, value in (("classes", classes), ("scores", scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != len(examples)):
            raise invalid_argument(f"Expected {key} Tensor of shape [batch_size num_classes] with batch size "
                                   f"{len(examples)}. Got: {list(value.shape)}")
    reference = classes if classes is not None else scores
    labels = tensor_to_json(classes) if classes is not None else [[""] * reference.shape[1]] * len(examples)
    values = tensor_to_json(scores) if scores is not None else [[0.0] * reference.shape[1]] * len(examples)
    return {"results": [[list(pair) for pair in zip(row_labels, row_scores)]
                        for row_labels, row_scores in zip(labels, values)]}


def status_response(model: Model, version: int | None) -> dict:
    """GetModelStatusResponse as JSON: every loaded version (newest first) or the one asked for."""
    if version is not None and version not in model.servables:
        raise not_found(f"Could not find version {version} of model {model.name}")
    versions = [version] if version is not None else sorted(model.servables, reverse=True)
    return {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in versions]}


def metadata_response(model: Model, servable: Servable) -> dict:
    """GetModelMetadataResponse as TF Serving writes it: model_spec plus the SavedModel's signature_def map."""
    signature_defs = {name: compat.message_to_dict(signature_def, with_defaults=True)
                      for name, signature_def in servable.signature_defs.items()}
    return {"model_spec": {"name": model.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


# --- HTTP -------------------------------------------------------------------------------------------------------


class RestApi:
    """Dispatches TF Serving REST paths to the loaded models; every failure becomes a ServingError."""

    def __init__(self, models: Mapping[str, Model]):
        self.models = dict(models)

    def _model(self, name: str, request: str) -> Model:
        if name not in self.models:
            raise not_found(f"Could not find any versions of model {name}" if request == "status"
                            else f"Servable not found for request: Latest({name})")
        return self.models[name]

    def _servable(self, name: str, version: int | None, label: str | None) -> tuple[Model, Servable]:
        if label is not None and (name not in self.models or label not in self.models[name].labels):
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        if name not in self.models:
            spec = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {spec}")
        model = self.models[name]
        return model, model.servable(version, label)

    def handle(self, method: str, path: str, body: bytes) -> dict:
        """The JSON response of one request (raising ServingError for an error response)."""
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        pattern = {"POST": _PREDICTION_PATH, "GET": _STATUS_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern else None
        if match is None:
            raise malformed
        name, version_text, label, verb = match.groups()
        name = urllib.parse.unquote(name) if name else name
        label = urllib.parse.unquote(label) if label else None
        version = None
        if version_text:
            version = int(version_text)
            if version > _INT64_MAX:
                raise invalid_argument(f"Failed to convert version: {version_text} to numeric.")
        if method == "GET":
            if not name:
                raise invalid_argument("Missing model name in request.")
            if verb:
                return metadata_response(*self._servable(name, version, label))
            return status_response(self._model(name, "status"), version)
        verb = verb.lower()
        if verb == "regress":
            raise ServingError(501, "This server implements predict and classify; regress is not supported")
        doc = parse_json_object(body)
        signature = signature_name_of(doc)
        if verb == "classify":
            examples = classify_examples(doc)
            return classify(self._servable(name, version, label)[1], signature, examples)
        servable = self._servable(name, version, label)[1]
        signature = signature or DEFAULT_SIGNATURE
        if signature not in servable.signature_defs:
            raise invalid_argument(f'Serving signature name: "{signature}" not found in signature def')
        infos = servable.signature_defs[signature].inputs
        if not infos:
            raise invalid_argument(f"Failed to get input map for signature: {signature}")
        tensors, row = predict_inputs(doc, infos)
        return predict_response(run_signature(servable, signature, tensors), row)


def _json_response(status: int, payload: dict) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload, allow_nan=True).encode(),
                        content_type="application/json")


def make_app(models: Mapping[str, Model], max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
             num_threads: int = 4) -> web.Application:
    """The aiohttp application: request bodies bounded, each request run on a worker thread."""
    api = RestApi(models)
    pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
    application = web.Application(client_max_size=max_request_bytes)

    async def handle(request: web.Request) -> web.Response:
        path = request.rel_url.raw_path
        if not re.match(r"/v1/", path, re.I):
            return _json_response(404, {"error": f"Not found: {path}; the REST API lives under /v1/models"})
        too_large = {"error": f"Request body exceeds the limit of {max_request_bytes} bytes (--max_request_bytes)"}
        if (request.content_length or 0) > max_request_bytes:
            return _json_response(413, too_large)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_response(413, too_large)
        try:
            payload = await asyncio.get_running_loop().run_in_executor(pool, api.handle, request.method, path, body)
        except ServingError as error:
            return _json_response(error.status, {"error": error.message})
        except Exception as error:  # a bug must cost one request a 500, never the server
            logging.exception("internal error serving %s %s", request.method, path)
            return _json_response(500, {"error": f"Internal: {type(error).__name__}: {error}"})
        return _json_response(200, payload)

    async def shutdown(_: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    application.router.add_route("*", "/{tail:.*}", handle)
    application.on_cleanup.append(shutdown)
    return application


class Server:
    """Runs the app on its own event-loop thread: `with Server(models, port=0) as s: ... s.url ...`."""

    def __init__(self, models: Mapping[str, Model], host: str = "127.0.0.1", port: int = 0,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, num_threads: int = 4):
        self.app = make_app(models, max_request_bytes, num_threads)
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self.app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Server:
        """Binds and starts serving; returns once the port accepts connections."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the bound port when 0 was asked for

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
