"""rediss:// against a real Redis behind a TLS front, with certificates made here in Python:
verification is on, and the server requires our client certificate."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from devservices.redis import RedisServer
from devservices.tls import TlsProxy
from settings import Settings
from tests.conftest import make_settings
from tests.sample_jobs import TEST_REGISTRY
from worker.ops.doctor import check_redis
from worker.producer import Producer


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None = None,
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs, a server certificate for `localhost` and a client certificate, made in Python."""
    d = tmp_path_factory.mktemp("tls")
    cas = {}
    for ca in ("ca", "other-ca"):
        key = _key()
        cert = _certificate(f"Test {ca}", key)
        _write(d / ca, key, cert)
        cas[ca] = (cert.subject, key)
    server_key, client_key = _key(), _key()
    server = _certificate(
        "localhost", server_key, cas["ca"],
        [x509.SubjectAlternativeName([x509.DNSName("localhost")]),
         x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])],
    )  # fmt: skip
    client = _certificate(
        "worker", client_key, cas["ca"], [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])]
    )
    _write(d / "server", server_key, server)
    _write(d / "client", client_key, client)
    return d


@pytest.fixture(scope="module")
def tls_port(certs: Path) -> Iterator[int]:
    """A plain redis-server behind the project's own TLS front, which requires a client
    certificate signed by our CA: works with any server build, TLS-capable or not."""
    with (
        RedisServer() as server,
        TlsProxy(
            server.port,
            cert_file=str(certs / "server.crt"),
            key_file=str(certs / "server.key"),
            client_ca_file=str(certs / "ca.crt"),
        ) as proxy,
    ):
        yield proxy.port


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


async def test_a_client_without_our_certificate_is_refused(certs: Path, tls_port: int) -> None:
    settings = make_settings(
        f"rediss://localhost:{tls_port}/0",
        redis_tls_ca_file=str(certs / "ca.crt"),
        redis_connect_timeout=2.0,
        redis_socket_timeout=2.0,
    )
    check = await check_redis(settings)
    assert check.state == "not working"
