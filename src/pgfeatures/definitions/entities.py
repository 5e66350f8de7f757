"""Entities: what features are about (a user, a merchant, a card) and how each is keyed.

An entity has a name, a key type and the name of its key column in every table of that entity::

    [entities.user]
    key = "bigint"            # bytea32 (default), bigint, text, uuid
    column = "user_id"        # default: <name>_id ("hashkey" for the default entity)

    [entities.merchant]
    hash = "sha256"           # callers pass natural ids; stored as their SHA-256 (bytea32)
    column = "merchant_key"

    [entities.device]
    key = "text"
    max_length = 64           # text keys are bounded (default 256 characters)

A definition without entities has one default entity, ``entity``, keyed by ``hashkey bytea``
(32 bytes): today's layout, so existing definitions, data and clients are unchanged.

Keys are checked per entity before any I/O, with errors that say what was wrong and what is
valid. With ``hash = "sha256"``, a natural id is hashed the way ``pgfeatures load --hash-keys``
hashes it (``hash_key``): a string as its UTF-8 bytes, an integer as its decimal text, bytes as
they are.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.types.numeric import Int8

from ..errors import DefinitionError, KeyFormatError
from .names import check_not_reserved
from .types import check_identifier

KEY_COLUMN = "hashkey"
KEY_LENGTH = 32
KEY_TYPES = ("bytea32", "bigint", "text", "uuid")
HASHES = ("sha256",)
DEFAULT_ENTITY_NAME = "entity"
DEFAULT_TEXT_LENGTH = 256
INT8_RANGE = (-(2**63), 2**63 - 1)
# PostgreSQL's own grammars, so a key means what the database would make of the same text:
# int8in's decimal form (leading and trailing C-locale whitespace, a sign, ASCII digits; PostgreSQL 16+
# also takes "1_000" and 0x/0o/0b prefixes, which are not decimal text and are refused here), and
# uuid_in's (32 hex digits, a hyphen allowed after any group of four, braces around the whole), with
# the RFC 9562 URN prefix ``urn:uuid:`` besides.
BIGINT_TEXT = re.compile(r"[ \t\n\r\v\f]*[+-]?[0-9]+[ \t\n\r\v\f]*")
_UUID_DIGITS = r"[0-9a-fA-F]{4}(?:-?[0-9a-fA-F]{4}){7}"
UUID_TEXT = re.compile(rf"(?:[uU][rR][nN]:[uU][uU][iI][dD]:)?(?:\{{{_UUID_DIGITS}\}}|{_UUID_DIGITS})")
_NOT_HEX = re.compile(r"[^0-9a-fA-F]")


def bigint_text_value(text: str) -> int | None:
    """The value of a text that ``BIGINT_TEXT`` matches, or None when it is beyond 64 bits (checked
    before ``int()``, which refuses 4,300 digits and more, leading zeros included)."""
    text = text.strip(" \t\n\r\v\f")
    sign = "-" if text[0] == "-" else ""
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 19:
        return None
    value = int(sign + digits)
    return value if INT8_RANGE[0] <= value <= INT8_RANGE[1] else None


# Key type -> (column type in DDL, format_type() of the live column, parameter cast)
_SQL_TYPES = {
    "bytea32": ("bytea", "bytea", "bytea"),
    "bigint": ("bigint", "bigint", "int8"),
    "text": ("text", "text", "text"),
    "uuid": ("uuid", "uuid", "uuid"),
}


def hash_key(natural_id: str | int | bytes) -> bytes:
    """The 32-byte key of a natural id: SHA-256 of a string's UTF-8 bytes, of an integer's decimal
    text, or of bytes as they are (the rule of ``pgfeatures load --hash-keys``). Raises KeyFormatError."""
    if isinstance(natural_id, bool):
        raise KeyFormatError(f"a natural id must be a string, an integer or bytes, got {natural_id!r}")
    if isinstance(natural_id, str):
        try:
            data = natural_id.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 form to hash
            raise KeyFormatError(
                f"a natural id must be valid Unicode text: {natural_id!r} has no UTF-8 form "
                f"({exc.reason} at character {exc.start})"
            ) from None
    elif isinstance(natural_id, int):
        data = _decimal(natural_id).encode()
    elif isinstance(natural_id, (bytes, bytearray, memoryview)):
        data = bytes(natural_id)
    else:
        raise KeyFormatError(f"a natural id must be a string, an integer or bytes, got {type(natural_id).__name__}")
    return hashlib.sha256(data).digest()


def _decimal(number: int) -> str:
    """An integer's decimal text; KeyFormatError past str()'s limit (4,300 digits): no key has that many."""
    if number.bit_length() > 14_000:  # about 4,214 digits: below the limit, far beyond any key
        raise KeyFormatError(f"an integer key must be shorter, got {_huge(number)}")
    return str(number)


def _huge(number: int) -> str:
    return f"an integer of about {number.bit_length() * 0.30103:,.0f} digits"


def parse_hash_key(key: Any) -> bytes:
    """A 32-byte key from bytes or 64 hex characters (the default entity). Raises KeyFormatError."""
    if isinstance(key, bytes):
        if len(key) == KEY_LENGTH:
            return key
        raise KeyFormatError(f"key must be {KEY_LENGTH} bytes, got {len(key)} bytes")
    if isinstance(key, str):
        if len(key) != 2 * KEY_LENGTH:
            raise KeyFormatError(f"hex key must be {2 * KEY_LENGTH} hex characters, got {len(key)} characters")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raw = b""
        if len(raw) != KEY_LENGTH:  # fromhex skips whitespace: "ab cd..." would decode short
            raise KeyFormatError(f"hex key has non-hex characters: {key!r}")
        return raw
    if isinstance(key, (bytearray, memoryview)):
        return parse_hash_key(bytes(key))
    raise KeyFormatError(f"key must be bytes (32) or a hex string (64 characters), got {type(key).__name__}")


@dataclass(frozen=True)
class Entity:
    """An entity: its name, key type and key column. Build directly or with ``Entity.of``."""

    name: str
    key_type: str = "bytea32"
    column: str = ""
    max_length: int = DEFAULT_TEXT_LENGTH
    hash: str | None = None

    def __post_init__(self) -> None:
        check_not_reserved("entity", check_identifier("entity", self.name))
        if self.key_type not in KEY_TYPES:
            raise DefinitionError(
                f"entity {self.name!r}: unknown key type {self.key_type!r} (valid: {', '.join(KEY_TYPES)})"
            )
        if self.hash is not None:
            if self.hash not in HASHES:
                raise DefinitionError(f"entity {self.name!r}: unknown hash {self.hash!r} (valid: {', '.join(HASHES)})")
            if self.key_type != "bytea32":
                raise DefinitionError(
                    f'entity {self.name!r}: hash = {self.hash!r} stores 32-byte keys (key = "bytea32"), '
                    f"not {self.key_type}"
                )
        if not self.column:
            default = KEY_COLUMN if self.name == DEFAULT_ENTITY_NAME else f"{self.name}_id"
            object.__setattr__(self, "column", default)
        check_not_reserved("key column", check_identifier("key column", self.column))
        if (
            not isinstance(self.max_length, int)
            or isinstance(self.max_length, bool)
            or not 1 <= self.max_length <= 10_000
        ):
            raise DefinitionError(
                f"entity {self.name!r}: max_length must be an integer from 1 to 10000, got {self.max_length!r}"
            )

    @property
    def column_type(self) -> str:
        """The key column's type in DDL."""
        return _SQL_TYPES[self.key_type][0]

    @property
    def live_type(self) -> str:
        """The key column's type as the catalog (``format_type``) shows it."""
        return _SQL_TYPES[self.key_type][1]

    @property
    def cast(self) -> str:
        """The cast of a key parameter (``$1::int8``)."""
        return _SQL_TYPES[self.key_type][2]

    @property
    def accepts(self) -> str:
        """What a key of this entity may be, for error messages and documents."""
        if self.hash:
            return "a natural id (a string, or an integer: its decimal text), hashed with SHA-256"
        return {
            "bytea32": "32 bytes, or 64 hex characters",
            "bigint": "an integer (a signed 64-bit bigint), or its decimal text",
            "text": f"a string of 1 to {self.max_length} characters",
            "uuid": "a UUID (32 hex digits, hyphens and braces as PostgreSQL takes them, or urn:uuid:...; "
            "16 bytes, or uuid.UUID)",
        }[self.key_type]

    def parse(self, key: Any) -> Any:
        """The database parameter for ``key``. Raises KeyFormatError naming the entity and saying what is valid."""
        if self.hash:
            if isinstance(key, str) and not key:
                raise KeyFormatError(f"{self.name} key: a natural id must not be empty")
            try:
                return hash_key(key)
            except KeyFormatError as exc:
                raise KeyFormatError(f"{self.name} key: {exc}") from None
        kind = self.key_type
        if kind == "bytea32":
            try:
                return parse_hash_key(key)
            except KeyFormatError as exc:
                raise KeyFormatError(f"{self.name} {exc}") from None
        if kind == "bigint":
            return Int8(self._integer(key))
        if kind == "text":
            return self._text(key)
        return self._uuid(key)

    def _integer(self, key: Any) -> int:
        if isinstance(key, bool):
            raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {key!r}")
        if isinstance(key, str):
            if not BIGINT_TEXT.fullmatch(key):  # int() would take "1_0", "٣" and Unicode spaces, and fail on "+-5"
                raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {key!r}")
            value = bigint_text_value(key)
            if value is None:
                lo, hi = INT8_RANGE
                text = key.strip(" \t\n\r\v\f")  # digits and a sign only: shown as the number it is
                raise KeyFormatError(
                    f"{self.name} key {text if len(text) <= 40 else text[:37] + '...'} is out of "
                    f"range for bigint ({lo}..{hi})"
                )
            key = value
        if not isinstance(key, int):
            raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {type(key).__name__}")
        lo, hi = INT8_RANGE
        if not lo <= key <= hi:
            shown = str(key) if key.bit_length() <= 256 else _huge(key)  # str() refuses 4,300 digits and more
            raise KeyFormatError(f"{self.name} key {shown} is out of range for bigint ({lo}..{hi})")
        return key

    def _text(self, key: Any) -> str:
        if isinstance(key, int) and not isinstance(key, bool):
            if key.bit_length() > 14_000:
                raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {_huge(key)}")
            key = str(key)
        if not isinstance(key, str):
            raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {type(key).__name__}")
        if not 1 <= len(key) <= self.max_length:
            raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {len(key)} characters")
        if "\x00" in key:
            raise KeyFormatError(f"{self.name} key must not contain NUL characters")
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate: PostgreSQL's text cannot hold it
                raise KeyFormatError(
                    f"{self.name} key must be valid Unicode text: {key!r} has no UTF-8 form "
                    f"({exc.reason} at character {exc.start})"
                ) from None
        return key

    def _uuid(self, key: Any) -> uuid.UUID:
        if isinstance(key, uuid.UUID):
            return key
        if isinstance(key, (bytes, bytearray)) and len(key) == 16:
            return uuid.UUID(bytes=bytes(key))
        if isinstance(key, str) and UUID_TEXT.fullmatch(key):  # uuid.UUID alone takes "+", "0x", "_" and spaces
            return uuid.UUID(hex=_NOT_HEX.sub("", key[9:] if key[:1] in "uU" else key))
        shown = repr(key) if isinstance(key, (str, bytes)) else type(key).__name__
        raise KeyFormatError(f"{self.name} key must be {self.accepts}, got {shown}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key_type, "column": self.column}
        if self.key_type == "text":
            out["max_length"] = self.max_length
        if self.hash:
            out["hash"] = self.hash
        return out

    @classmethod
    def from_dict(cls, name: str, spec: Any) -> Entity:
        """From the TOML ``[entities.<name>]`` table. Raises DefinitionError naming the entity."""
        if not isinstance(spec, dict):
            raise DefinitionError(f"entity {name!r} needs a table of settings (key, column, max_length, hash)")
        unknown = set(spec) - {"key", "column", "max_length", "hash"}
        if unknown:
            raise DefinitionError(
                f"entity {name!r}: unknown key(s) {', '.join(sorted(unknown))} (valid: key, column, max_length, hash)"
            )
        return cls(
            name,
            spec.get("key", "bytea32"),
            spec.get("column", ""),
            spec.get("max_length", DEFAULT_TEXT_LENGTH),
            spec.get("hash"),
        )


DEFAULT_ENTITY = Entity(DEFAULT_ENTITY_NAME)
