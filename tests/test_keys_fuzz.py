"""Every key parser, fuzzed (hypothesis) against its entity's rule and against PostgreSQL itself.

For each key type (bytea32, bigint, text, uuid, a hashed natural id):

- ``Entity.parse`` either returns the parameter or raises KeyFormatError naming the entity, for any
  input whatever (text, numbers, bytes, containers): never ValueError, UnicodeEncodeError, ...;
- text it accepts means what PostgreSQL makes of the same text (``%s::int8``, ``%s::uuid``, the
  text itself, ``sha256(convert_to(%s, 'UTF8'))``, ``decode(%s, 'hex')``), and text PostgreSQL
  refuses is refused (a bigint's only exceptions: PostgreSQL 16's non-decimal forms, ``1_000`` and
  ``0x1F``, which the rule, decimal text, leaves out; a UUID's: the ``urn:uuid:`` prefix);
- the loader's vectorized key columns (load/keys.py) accept exactly the rows ``Entity.parse``
  accepts, with the same values;
- over HTTP, any JSON key gets 200 or 400 ``invalid_key`` naming the entity, never a 500 (in-process
  app); the CLI prints one ``error:`` line naming the entity.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pgfeatures.cli import main as cli_main
from pgfeatures.definitions import Entity, Registry
from pgfeatures.errors import KeyFormatError
from pgfeatures.load.keys import key_column
from pgfeatures.schema import apply_schema
from pgfeatures.server import ServerConfig
from pgfeatures.server.parsing import json_key
from support.inprocess import running_app

ENTITIES = {
    "user": Entity("user", "bigint"),
    "device": Entity("device", "text", max_length=16),
    "session": Entity("session", "uuid"),
    "merchant": Entity("merchant", hash="sha256", column="merchant_key"),
    "entity": Entity("entity"),
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_C_SPACE = " \t\n\r\v\f"
SPACE = st.text(alphabet=_C_SPACE + "\xa0\u2003\x1c\x85", max_size=2)
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=22)
BIGINT_TEXT = st.one_of(
    st.builds(
        lambda a, s, d, b: a + s + d + b, SPACE, st.sampled_from(["", "+", "-", "+-", "--", "-+"]), DIGITS, SPACE
    ),
    st.text(alphabet=_C_SPACE + "+-0123456789_xXoObBaf٣\xa0", max_size=24),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.text(max_size=24),
)
HEX = "0123456789abcdefABCDEF"
UUID_TEXT = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    # hex digits with hyphens, braces, signs and spaces anywhere: what uuid.UUID alone would take
    st.text(alphabet=HEX + "-{} +_xurn:id", min_size=28, max_size=44),
    st.text(max_size=44),
)
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)  # surrogates and NUL too
TEXTS = {
    "user": BIGINT_TEXT,
    "device": st.one_of(ANY_TEXT, st.text(min_size=0, max_size=20)),
    "session": UUID_TEXT,
    "merchant": st.one_of(ANY_TEXT, st.text(max_size=20)),
    "entity": st.one_of(
        st.text(alphabet=HEX + " \n", min_size=60, max_size=66),
        st.binary(min_size=32, max_size=32).map(bytes.hex),
        st.text(max_size=70),
    ),
}
NOT_TEXT = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(10**5000),
    st.just(-(10**5000)),  # past str()'s 4,300 digits
)


def parsed(entity: Entity, key: Any) -> Any:
    """``Entity.parse``'s value, or the KeyFormatError it raised (any other exception fails the test)."""
    try:
        return entity.parse(key)
    except KeyFormatError as exc:
        assert str(exc).startswith(f"{entity.name} "), str(exc)  # the entity is named, first
        return exc


@pytest.fixture(scope="module")
def pg(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


REFUSED = object()


def postgres(conn: psycopg.Connection, expression: str, text: str | bytes) -> Any:
    """What PostgreSQL makes of ``text`` in ``expression`` (``%s`` the text), or REFUSED."""
    try:
        return conn.execute(sql.SQL("SELECT " + expression), [text]).fetchone()[0]
    except (
        psycopg.Error,
        UnicodeEncodeError,
    ):  # refused by the server, or text psycopg cannot even send (NUL, surrogates)
        return REFUSED


# -- Entity.parse against PostgreSQL ------------------------------------------------------------------


@FUZZ
@given(text=TEXTS["user"])
@example(text="+-5")
@example(text="--5")
@example(text=" -9223372036854775808\n")
@example(text="9223372036854775808")
@example(text="1_000")
@example(text="0x1F")
@example(text="\x1c5")
@example(text="1" * 5000)  # int() refuses 4,300 digits
@example(text=" -" + "0" * 5000 + "7 ")
def test_bigint_text_means_what_postgres_reads(pg: psycopg.Connection, text: str) -> None:
    ours = parsed(ENTITIES["user"], text)
    theirs = postgres(pg, "%s::int8", text)
    if isinstance(ours, KeyFormatError):
        non_decimal = re.fullmatch(r"[+-]?(?:0[xXoObB][0-9a-fA-F_]+|[0-9_]+)", text.strip(_C_SPACE)) and (
            "_" in text or re.search("0[xXoObB]", text)
        )
        assert theirs is REFUSED or non_decimal, (text, theirs)
    else:
        assert theirs == int(ours), (text, ours, theirs)


@FUZZ
@given(text=TEXTS["session"])
@example(text="+2345678123456781234567812345678")
@example(text="{12345678-1234-5678-1234-567812345678")
@example(text="1234-5678-1234-5678-1234-5678-1234-5678")
@example(text="urn:uuid:12345678-1234-5678-1234-567812345678")
def test_uuid_text_means_what_postgres_reads(pg: psycopg.Connection, text: str) -> None:
    ours = parsed(ENTITIES["session"], text)
    urn = text[:9].lower() == "urn:uuid:"
    theirs = postgres(pg, "%s::uuid", text[9:] if urn else text)
    if isinstance(ours, KeyFormatError):
        assert theirs is REFUSED, (text, theirs)
    else:
        assert theirs == ours, (text, ours, theirs)


@FUZZ
@given(text=TEXTS["device"])
@example(text="\ud800")
@example(text="a\x00b")
@example(text="x" * 17)
def test_text_keys_are_what_postgres_stores(pg: psycopg.Connection, text: str) -> None:
    ours = parsed(ENTITIES["device"], text)
    theirs = postgres(pg, "%s::text", text)
    if isinstance(ours, KeyFormatError):
        assert theirs is REFUSED or not 1 <= len(text) <= 16, (text, theirs)
    else:
        assert theirs == ours == text


@FUZZ
@given(text=TEXTS["merchant"])
@example(text="\udc80x")
@example(text="")
def test_natural_ids_hash_as_postgres_hashes_their_utf8(pg: psycopg.Connection, text: str) -> None:
    ours = parsed(ENTITIES["merchant"], text)
    if "\x00" in text and _utf8(text):  # a NUL is UTF-8 too, but no PostgreSQL text: hash its bytes
        theirs = postgres(pg, "sha256(%s::bytea)", text.encode())
    else:
        theirs = postgres(pg, "sha256(convert_to(%s, 'UTF8'))", text)
    if isinstance(ours, KeyFormatError):
        assert theirs is REFUSED or text == "", (text, theirs)
    else:
        assert theirs == ours


@FUZZ
@given(text=TEXTS["entity"])
def test_hex_keys_are_the_bytes_postgres_decodes(pg: psycopg.Connection, text: str) -> None:
    ours = parsed(ENTITIES["entity"], text)
    if not isinstance(ours, KeyFormatError):
        assert postgres(pg, "decode(%s, 'hex')", text) == ours and len(ours) == 32


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(list(ENTITIES)), key=NOT_TEXT)
def test_any_python_value_is_a_key_or_a_key_format_error(name: str, key: Any) -> None:
    parsed(ENTITIES[name], key)


# -- the loader's key columns against Entity.parse --------------------------------------------------


VALID_UTF8 = st.text(max_size=24)  # an Arrow string column holds valid UTF-8 only


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(list(ENTITIES)), data=st.data())
def test_loader_key_columns_accept_what_entity_parse_accepts(name: str, data: st.DataObject) -> None:
    entity = ENTITIES[name]
    texts = data.draw(
        st.lists(st.one_of(TEXTS[name].filter(_utf8), VALID_UTF8, st.just("1" * 5000)), min_size=1, max_size=12)
    )
    keys, problems = key_column(pa.array(texts, pa.string()), entity.column, entity, False)
    for i, text in enumerate(texts):
        ours = parsed(entity, text)
        refused = [p.reason(i) for p in problems if p.mask[i]]
        assert bool(refused) == isinstance(ours, KeyFormatError), (text, refused, ours)
        if refused:
            continue
        loaded = keys[i].as_py() if isinstance(keys, pa.Array) else keys[i]
        if entity.key_type == "bigint":
            assert int(loaded) == int(ours), text
        elif entity.key_type == "uuid":
            assert bytes(loaded) == ours.bytes, text
        elif entity.key_type == "text":
            assert loaded == ours, text
        else:
            assert bytes(loaded) == ours, text


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- HTTP and the CLI ---------------------------------------------------------------------------------

TABLES = {"user": "users", "device": "devices", "session": "sessions", "merchant": "merchants", "entity": "plain"}
DEFINITIONS = """
schema = "{schema}"
[entities.user]
key = "bigint"
[entities.device]
key = "text"
max_length = 16
[entities.session]
key = "uuid"
[entities.merchant]
hash = "sha256"
column = "merchant_key"
""" + "".join(
    f"[tables.{t}]\n" + (f'entity = "{e}"\n' if e != "entity" else "") + 'features = {{ f = "real" }}\n'
    for e, t in TABLES.items()
)


@pytest.fixture(scope="module")
def definitions(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    schema = f"test_keys_{uuid.uuid4().hex[:10]}"
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    path.write_text(DEFINITIONS.format(schema=schema))
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_schema(conn, Registry.from_toml(path))
        yield path
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def client(dsn: str, definitions: Path) -> Iterator[httpx.Client]:
    with running_app(ServerConfig(dsn=dsn, definitions=str(definitions), prewarm=False, pool_size=2)) as c:
        yield c


JSON_KEYS = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=2)),
    max_leaves=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from([n for n in ENTITIES if n != "entity"]),
    key=st.one_of(JSON_KEYS, BIGINT_TEXT.filter(_utf8), UUID_TEXT.filter(_utf8)),
)
@example(name="user", key="+-5")
@example(name="user", key="--5")
def test_http_answers_any_key_with_200_or_400_naming_the_entity(client: httpx.Client, name: str, key: Any) -> None:
    for body in ({"key": key, "tables": [TABLES[name]]}, {"key": {name: key}, "tables": [TABLES[name]]}):
        r = client.post("/v1/features", json=body)
        assert r.status_code in (200, 400), (key, r.status_code, r.text)
        if r.status_code == 400:
            error = r.json()["error"]
            assert error["type"] in ("invalid_key", "invalid_request", "unknown_entity"), error
            if error["type"] == "invalid_key" and not isinstance(key, dict):
                assert f"{name} key" in error["message"], error
        else:  # what HTTP accepts, the library accepts once JSON's integral floats are read as integers
            sent = json_key(key, "key")
            assert parsed(ENTITIES[name], sent) is not None and not isinstance(
                parsed(ENTITIES[name], sent), KeyFormatError
            )


@pytest.mark.parametrize("key", ["+-5", "--5"])
def test_the_cli_names_the_entity_of_a_bad_bigint_key(
    dsn: str, definitions: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["get", "--dsn", dsn, "-d", str(definitions), "-t", "users", f"user={key}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip() == f"error: user key must be an integer (a signed 64-bit bigint), or its decimal text, got {key!r}"
    )
