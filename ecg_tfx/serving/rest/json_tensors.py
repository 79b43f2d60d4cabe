"""JSON <-> tensors as TF Serving's REST API converts them (`json_tensor.cc`): row and columnar predict inputs,
classify examples, b64 strings, and the response bodies. Errors are worded as TF Serving words them."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from ecg_tfx.core import compat
from ecg_tfx.serving.errors import ServingError, from_code, invalid_argument

INT64_MAX = 2**63 - 1
MAX_QUOTED_JSON = 200  # characters of a request value quoted back in an error message
# Nesting levels of arrays and objects a request may use (an ECG predict request uses 5): deeper documents get 400
# before any code walks them recursively (numpy arrays have at most 32 dimensions).
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def _quote(value: Any) -> str:
    """A JSON value as quoted in error messages, shortened when long."""
    text = json.dumps(value)
    return text if len(text) <= MAX_QUOTED_JSON else text[:MAX_QUOTED_JSON] + "...(truncated)"


def _json_type(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value).replace("None", "Null")
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _utf8(text: str) -> bytes:
    """A request string as UTF-8; a lone UTF-16 surrogate (a "\\ud800" escape without its pair), which TF Serving's
    parser refuses, gets 400 here too."""
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string: a lone UTF-16 surrogate "
                               f"{error.object[error.start]!r}") from None


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
                return _utf8(value)
            if isinstance(value, dict):
                return _decode_b64(value)
            raise type_error(value)

        return np.dtype(object), to_bytes

    def unsupported(value: Any) -> None:
        raise from_code("UNIMPLEMENTED", f"Conversion of JSON Value: {_quote(value)} to type: {name}")

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


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a valid JSON document (brackets inside strings do not count)."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0))


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object; NaN and Infinity are accepted, as by TF Serving's parser."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    too_deep = invalid_argument(f"JSON Parse error: nested deeper than {MAX_JSON_DEPTH} arrays and objects")
    try:
        doc = json.loads(body)
    except RecursionError:  # far deeper than the limit: Python's parser gives up first
        raise too_deep from None
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except ValueError:  # an integer literal longer than Python converts (sys.get_int_max_str_digits(): 4300)
        raise invalid_argument("JSON Parse error: Number too big to be stored in double") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise too_deep
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
            if error.code != "INVALID_ARGUMENT":
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
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
            add("int64_list", value)
        elif isinstance(value, float):
            if not _lossless(value, np.dtype(np.float32)):
                raise invalid_argument(f"Cannot convert JSON value: {_quote(value)} to float without loss of "
                                       "precision.")
            add("float_list", value)
        elif isinstance(value, str):
            add("bytes_list", _utf8(value))
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
        _utf8(name)  # a feature name is a proto string
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
