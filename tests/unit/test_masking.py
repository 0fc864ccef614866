"""Masking, no server: the password a driver would send is what gets masked
(asyncpg's, redis-py's and yarl's own parse of the URL), secret headers and
secret query parameters are masked in any text and stop where their value
stops (a `|`, a quote, the report's closing backtick), and harmless text is
left alone."""

from __future__ import annotations

import json

import pytest
from asyncpg.connect_utils import _parse_connect_dsn_and_args
from redis.connection import parse_url
from yarl import URL

from app.targets import (
    MASK,
    Redactor,
    TargetError,
    check_pg_dsn,
    check_redis_url,
    redact,
    redact_params,
    url_secrets,
)

PASSWORDS = ["simple-pw1", "pa:ss:w0", "pa%2Fss", "p%40ss", "pässwörd", "p%25ss", "a%C3%A4b"]


def _asyncpg_password(dsn: str) -> str:
    _, params = _parse_connect_dsn_and_args(
        dsn=dsn, host=None, port=None, user=None, password=None, passfile="/nonexistent",
        database=None, ssl=None, service=None, servicefile=None, direct_tls=False,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None,
    )  # fmt: skip
    return params.password


@pytest.mark.parametrize("pw", PASSWORDS)
def test_the_masked_password_is_the_one_each_driver_sends(pw: str) -> None:
    pg = f"postgresql://u:{pw}@127.0.0.1:5432/db"
    assert _asyncpg_password(pg) in url_secrets(pg)
    rd = f"redis://u:{pw}@127.0.0.1:6379/0"
    assert parse_url(rd)["password"] in url_secrets(rd)
    ht = f"http://u:{pw}@127.0.0.1:8080/x"
    assert URL(ht).password in url_secrets(ht)
    for url in (pg, rd, ht):
        r = Redactor()
        r.add_url(url)
        sent = [_asyncpg_password(pg), parse_url(rd)["password"], URL(ht).password]
        # as written and as the driver decodes (and may echo) it: gone from any text
        for text in (url, f"error: auth failed for {sent[0]}", json.dumps({"e": url})):
            masked = r(text) if not text.startswith("{") else r.scrub_json(text)
            assert pw not in masked, masked


def test_an_unescaped_at_is_masked_whole_for_redis_and_refused_for_postgres() -> None:
    url = "redis://:Zz@Leak99@127.0.0.1:6379/0"
    assert parse_url(url)["password"] == "Zz@Leak99"  # what redis-py sends
    assert redact(url) == "redis://:***@127.0.0.1:6379/0"
    r = Redactor()
    r.add_url(url)
    assert "Leak99" not in r(f"connect {url} failed; password Zz@Leak99 rejected")
    with pytest.raises(TargetError) as e:
        check_pg_dsn("postgresql://u:Zz@Leak99@127.0.0.1/db")
    assert "%40" in str(e.value) and "Leak99" not in str(e.value)


def test_a_redis_database_that_is_not_a_number_is_refused() -> None:
    assert parse_url("redis://h:6379/abc").get("db") is None  # redis-py: silently db 0
    with pytest.raises(TargetError, match="database 'abc' is not a number"):
        check_redis_url("redis://h:6379/abc")
    assert check_redis_url("redis://h:6379/3") == "redis://h:6379/3"
    assert check_redis_url("valkey://h:6379/3") == "redis://h:6379/3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("`headers=Authorization: Bearer abc.def-123`", "`headers=Authorization: ***`"),
        ("headers=Authorization: Bearer t0k3n|X-Api-Key: k3y-v4l",
         "headers=Authorization: ***|X-Api-Key: ***"),
        ('{"Authorization": "Bearer t0k3n", "Accept": "x"}', '{"Authorization": "***", "Accept": "x"}'),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: ***"),
        ("Cookie: session=abc; other=def", "Cookie: ***"),
        ("GET /x?api_key=s3cr3t&n=1 failed", "GET /x?api_key=***&n=1 failed"),
        ("`path=/x?access_token=s3cr3t`", "`path=/x?access_token=***`"),
        ("sent Bearer abcdef123456 upstream", "sent Bearer *** upstream"),
        ("dsn host=x password=s3cr3t dbname=y", "dsn host=x password=*** dbname=y"),
        ("12.0s  err Authorization: Bearer abc  p50 3ms", "12.0s  err Authorization: ***  p50 3ms"),
    ],
)  # fmt: skip
def test_secret_headers_and_query_parameters_are_masked_where_they_stop(
    text: str, expected: str
) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["design=flat config=x", "-p keys=10000", "json_key=a.b", "stock-reservation mode=unsafe",
     "p95 < 500 ms", "monkey=1"],
)  # fmt: skip
def test_harmless_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_params_as_recorded() -> None:
    shown = redact_params({"password": "x1", "keys": "100", "headers": "X-Api-Key: k3y-v4l",
                           "api_token": "t0k"})  # fmt: skip
    assert shown == {"password": MASK, "keys": "100", "headers": "X-Api-Key: ***",
                     "api_token": MASK}  # fmt: skip
    r = Redactor.for_targets([], {"headers": "Authorization: Bearer t0k3n-abc"})
    assert "t0k3n-abc" not in r("the server said: invalid token t0k3n-abc")


def test_a_secret_query_parameter_in_a_path_is_a_known_secret() -> None:
    r = Redactor.for_targets([], {"path": "/v1/items?api_key=Qk-s3cr3t&n=1", "mode": "unsafe"})
    assert r("upstream rejected Qk-s3cr3t") == "upstream rejected ***"
    assert r("mode unsafe") == "mode unsafe"
