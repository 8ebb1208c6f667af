"""rediss:// against a real TLS redis-server with certificates made here: verification is on."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from devservices._process import pick_port
from devservices.redis import RedisServer
from settings import Settings
from tests.conftest import make_settings
from tests.sample_jobs import TEST_REGISTRY
from worker.ops.doctor import check_redis
from worker.producer import Producer


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(cwd: Path, ca: str, name: str, subject: str, ext: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
             "-extfile", f"{name}.ext", cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=Test {ca}", cwd=d)  # fmt: skip
    _issue(d, "ca", "server", "/CN=localhost", "subjectAltName=DNS:localhost\n")
    _issue(d, "ca", "client", "/CN=worker", "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture(scope="module")
def tls_port(certs: Path) -> Iterator[int]:
    port = pick_port()
    args = ["--tls-port", str(port), "--tls-cert-file", str(certs / "server.crt"),
            "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
            "--tls-auth-clients", "yes"]  # fmt: skip
    with RedisServer(extra_args=args):
        yield port


def _tls_settings(certs: Path, host: str, port: int, ca: str = "ca", **extra: object) -> Settings:
    return make_settings(
        f"rediss://{host}:{port}/0",
        redis_tls_ca_file=str(certs / f"{ca}.crt"),
        redis_tls_cert_file=str(certs / "client.crt"),
        redis_tls_key_file=str(certs / "client.key"),
        redis_connect_timeout=2.0,
        redis_socket_timeout=2.0,
        **extra,
    )


async def test_connects_with_the_right_ca_and_hostname(certs: Path, tls_port: int) -> None:
    settings = _tls_settings(certs, "localhost", tls_port)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        assert producer.backend.usable
        handle = await producer.enqueue_job("record", {"key": "tls"})
        assert handle.mode == "queued"
    check = await check_redis(settings)
    assert check.state == "degraded"  # no persistence on this test server; TLS itself is fine
    assert "over TLS" in check.detail


async def test_refuses_a_server_signed_by_another_ca(certs: Path, tls_port: int) -> None:
    settings = _tls_settings(certs, "localhost", tls_port, ca="other-ca")
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        assert not producer.backend.usable
        assert (await producer.enqueue_job("record", {"key": "x"})).mode == "inline"
    check = await check_redis(settings)
    assert check.state == "not working"
    assert "certificate verify failed" in check.detail
    assert "TLS" in check.fix


async def test_refuses_a_certificate_for_another_hostname(certs: Path, tls_port: int) -> None:
    settings = _tls_settings(certs, "127.0.0.1", tls_port)  # the certificate names only localhost
    check = await check_redis(settings)
    assert check.state == "not working"
    assert "certificate verify failed" in check.detail


async def test_explicit_opt_out_connects_and_warns(
    certs: Path, tls_port: int, log_output: io.StringIO
) -> None:
    settings = _tls_settings(certs, "127.0.0.1", tls_port, ca="other-ca", redis_tls_insecure=True)
    async with Producer(settings, registry=TEST_REGISTRY) as producer:
        assert producer.backend.usable
    assert "TLS verification disabled by REDIS_TLS_INSECURE" in log_output.getvalue()


def test_missing_ca_file_is_a_settings_error(tmp_path: Path) -> None:
    from settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=r"REDIS_TLS_CA_FILE: file '/nope/ca\.pem' does not exist"):
        load_settings(_env_file=None, redis_tls_ca_file="/nope/ca.pem", redis_url=SecretStr("rediss://h:1/0"))
