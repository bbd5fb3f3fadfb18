"""Request metadata of the data plane: which model a request is for, and the mesh's internal hop metadata.

The model id comes from ``mm-model-id`` / ``mm-model-id-bin`` (concrete model) or ``mm-vmodel-id`` /
``mm-vmodel-id-bin`` (virtual model) headers; when neither is present, from field 1 of the request message
(``model_name`` of ModelInferRequest, ``name`` of ModelMetadata/ModelReady requests). Only that one field is
read, by scanning the top-level protobuf wire format; the payload is never decoded (DESIGN §3).

Internal metadata set by pods when forwarding: ``mm-hop`` (forward count), ``mm-exclude`` (instance ids not to
use), ``mm-internal`` (``hit`` = serve only if loaded here, ``load`` = load here unless another pod claimed the
model first, ``copy`` = load one more copy here), ``mm-lu`` (last-used time, epoch ms). They are honoured only
with the cluster's peer token in ``mm-peer-token`` (``mesh.dataplane.peer_auth``); a client that sends them
without it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mesh.errors import InvalidRequest
from mesh.ids import check_id

MODEL_ID = "mm-model-id"
MODEL_ID_BIN = "mm-model-id-bin"
VMODEL_ID = "mm-vmodel-id"
VMODEL_ID_BIN = "mm-vmodel-id-bin"
LEGACY_MODEL_ID = "tas-model-id"
HOP = "mm-hop"
EXCLUDE = "mm-exclude"
INTERNAL = "mm-internal"
LAST_USED = "mm-lu"
BALANCED = "mm-balanced"
PEER_TOKEN = "mm-peer-token"  # the cluster's peer secret: internal metadata is honoured only with it

MIN_COPIES = "mm-min-copies"  # registerModel extension: per-model copy bounds
MAX_COPIES = "mm-max-copies"
MODEL_SIZE = "mm-model-size"  # registerModel extension: the planned size of a copy, in bytes

INTERNAL_HIT = "hit"
INTERNAL_LOAD = "load"  # load here unless another pod claimed it first (then hand off to that pod)
INTERNAL_COPY = "copy"  # load an additional copy here (ensureLoaded between pods, copy scaling)
INTERNAL_FILL = "fill"  # load here into spare room only, never evicting (the leader's proactive loads)

V2_SERVICE = "inference.GRPCInferenceService"
#: The KServe V2 methods, by full gRPC method name -> their short name (metric label).
V2_METHODS = {
    f"/{V2_SERVICE}/{name}": name
    for name in (
        "ServerLive",
        "ServerReady",
        "ServerMetadata",
        "ModelReady",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    )
}


def method_label(method: str) -> str:
    """A bounded metric label for a gRPC method name: the V2 method's short name, else ``other`` (method
    names come from clients: they must never become label values or cache keys as they are)."""
    return V2_METHODS.get(method, "other")


# Headers never passed on to a runtime or peer as-is (the mesh rewrites what it needs).
_DROP_PREFIXES = ("mm-", "grpc-", "tas-")
_DROP_EXACT = frozenset({"content-type", "user-agent", "te", ":authority", "host"})


@dataclass(slots=True)
class RequestInfo:
    model_id: str | None = None
    vmodel_id: str | None = None
    hop: int = 0
    exclude: set[str] = field(default_factory=set)
    internal: str = ""
    last_used: int = 0
    balanced: bool = False
    peer_token: str = ""
    passthrough: list[tuple[str, str | bytes]] = field(default_factory=list)

    def internal_header(self) -> str:
        """The first internal header this request carries ("" if none): only peers may send these."""
        if self.internal:
            return INTERNAL
        if self.hop:
            return HOP
        if self.exclude:
            return EXCLUDE
        if self.last_used:
            return LAST_USED
        return ""


def parse_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> RequestInfo:
    """Read routing headers. Raises InvalidRequest naming the header that is wrong."""
    info = RequestInfo()
    model_ids: list[str] = []
    vmodel_ids: list[str] = []
    for key, value in metadata or ():
        key = key.lower()
        if key in (MODEL_ID, LEGACY_MODEL_ID):
            model_ids.append(_text(value, key))
        elif key == MODEL_ID_BIN:
            model_ids.append(_utf8(value, key))
        elif key == VMODEL_ID:
            vmodel_ids.append(_text(value, key))
        elif key == VMODEL_ID_BIN:
            vmodel_ids.append(_utf8(value, key))
        elif key == HOP:
            info.hop = _int(value, key)
        elif key == EXCLUDE:
            info.exclude.update(x for x in _text(value, key).split(",") if x)
        elif key == INTERNAL:
            info.internal = _text(value, key)
        elif key == LAST_USED:
            info.last_used = _int(value, key)
        elif key == BALANCED:
            info.balanced = _text(value, key).lower() == "true"
        elif key == PEER_TOKEN:
            info.peer_token = _text(value, key)
        elif not key.startswith(_DROP_PREFIXES) and key not in _DROP_EXACT:
            info.passthrough.append((key, value))
    if len(set(model_ids)) > 1:
        raise InvalidRequest("multi-model requests (several mm-model-id values) are not supported")
    if len(set(vmodel_ids)) > 1:
        raise InvalidRequest("several distinct mm-vmodel-id values in one request are not supported")
    if model_ids and vmodel_ids:
        raise InvalidRequest("request must not include both mm-model-id and mm-vmodel-id headers")
    if model_ids:
        info.model_id = _checked(model_ids[0], f"{MODEL_ID} header")
    if vmodel_ids:
        info.vmodel_id = _checked(vmodel_ids[0], f"{VMODEL_ID} header")
    return info


_VALID_IDS: dict[str, str] = {}  # ids that passed check_id (a valid id stays valid); bounded below


def _checked(value: str, what: str) -> str:
    """check_id, remembering ids that passed so the hot path checks each id once."""
    known = _VALID_IDS.get(value)
    if known is not None:
        return known
    value = check_id(value, what=what)
    if len(_VALID_IDS) >= 4096:
        _VALID_IDS.clear()
    _VALID_IDS[value] = value
    return value


def _text(value: str | bytes, key: str) -> str:
    if isinstance(value, bytes):
        return _utf8(value, key)
    return value


def _utf8(value: str | bytes, key: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"header {key} is not valid UTF-8") from exc


def _int(value: str | bytes, key: str) -> int:
    try:
        return int(_text(value, key))
    except ValueError as exc:
        raise InvalidRequest(f"header {key} must be an integer") from exc


# ---------------------------------------------------------------------------------------------------------
# Minimal protobuf wire-format access: read or replace one length-delimited field, nothing decoded.


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise InvalidRequest("malformed request payload: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise InvalidRequest("malformed request payload: varint too long")


def _fields(buf: bytes, pos: int = 0) -> Iterable[tuple[int, int, int, int]]:
    """Yield (field number, wire type, start of field incl. tag, end) for each top-level field from ``pos``."""
    end = len(buf)
    while pos < end:
        start = pos
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise InvalidRequest("malformed request payload: field number 0")
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise InvalidRequest(f"malformed request payload: unsupported wire type {wire}")
        if pos > end:
            raise InvalidRequest("malformed request payload: field runs past the end")
        yield number, wire, start, pos


def _value_span(buf: bytes, start: int) -> tuple[int, int]:
    """(start, end) of the value bytes of the length-delimited field whose tag starts at ``start``."""
    _, pos = _varint(buf, start)
    length, pos = _varint(buf, pos)
    return pos, pos + length


def read_string_field(buf: bytes, number: int = 1) -> str | None:
    """The last value of top-level string field ``number`` (protobuf: last one wins), or None."""
    found: tuple[int, int] | None = None
    for num, wire, start, _ in _fields(buf):
        if num == number:
            if wire != 2:
                raise InvalidRequest(f"malformed request payload: field {number} is not a string")
            found = _value_span(buf, start)
    if found is None:
        return None
    try:
        return buf[found[0] : found[1]].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"malformed request payload: field {number} is not valid UTF-8") from exc


def _encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _length_delimited(number: int, value: bytes) -> bytes:
    return _encode_varint((number << 3) | 2) + _encode_varint(len(value)) + value


def splice_string(buf: bytes, path: Sequence[int], value: str) -> bytes:
    """Return ``buf`` with the string at field path ``path`` set to ``value`` (ModelMesh idInjectionPath).

    For a top-level field every occurrence is removed and one new field is prepended; for a nested path the
    last occurrence of the enclosing message is rewritten in place, recursively. Everything else is copied
    byte for byte.
    """
    if not path:
        return buf
    number = path[0]
    if len(path) == 1:
        field = _length_delimited(number, value.encode("utf-8"))
        if buf.startswith(field) and all(num != number for num, _, _, _ in _fields(buf, len(field))):
            return buf  # already in the spliced form (the client sent this id first, once): no copy
        kept = [buf[s:e] for num, _, s, e in _fields(buf) if num != number]
        return field + b"".join(kept)
    spans = [(s, e) for num, wire, s, e in _fields(buf) if num == number and wire == 2]
    if not spans:
        return buf + _length_delimited(number, splice_string(b"", path[1:], value))
    start, end = spans[-1]  # rewrite the last occurrence in place; every other byte is kept
    vs, ve = _value_span(buf, start)
    return buf[:start] + _length_delimited(number, splice_string(buf[vs:ve], path[1:], value)) + buf[end:]
