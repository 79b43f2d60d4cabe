"""The one place that knows what differs between the tested stacks (constraints.txt and constraints-current.txt).

Callers use these helpers instead of the moved APIs, so a new TensorFlow, Keras or protobuf is handled here once.
"""

from __future__ import annotations

import inspect
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

# protobuf 5 renamed MessageToDict's including_default_value_fields to always_print_fields_with_no_presence.
_DEFAULTS_KEYWORD = next(name for name in ("always_print_fields_with_no_presence", "including_default_value_fields")
                         if name in inspect.signature(json_format.MessageToDict).parameters)


def message_to_dict(message: Message, with_defaults: bool = False) -> dict[str, Any]:
    """The message as JSON-ready dict with proto field names; `with_defaults` also prints unset scalar fields."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, **{_DEFAULTS_KEYWORD: with_defaults})


def serialize(message: Message) -> bytes:
    """The message's bytes, the same in every process and on every stack.

    Map fields (an Example's features, a request's inputs) are otherwise written in an order that varies per process
    under protobuf 6, which would break byte-identical shards, resume-by-reuse and the manifest's sha256s.
    """
    return message.SerializeToString(deterministic=True)
