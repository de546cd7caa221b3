"""Kafka and Schema Registry security settings: what they turn into (aiokafka options, a TLS
context, registry credentials), their start-up checks, and secrets kept out of reprs and logs.
The registry part runs against an HTTPS registry with basic auth and a test CA."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from convostream import logs, runtime
from convostream.readiness import registry_problem
from convostream.settings import CommonSettings, ConfigError, load_settings
from schemas.registry import RegistryAccess
from schemas.serde import open_serde
from schemas.topics import CATALOGUE
from tests.registry_server import fake_registry_server
from tests.tls_certs import ServerTls, make_server_tls

PASSWORD = "kafka-pw-0f3c9a"


@pytest.fixture
def tls(tmp_path: Path) -> ServerTls:
    return make_server_tls(tmp_path / "tls")


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env


def settings(**values: Any) -> CommonSettings:
    return load_settings(CommonSettings, values)


def test_plaintext_by_default() -> None:
    assert settings().kafka_security().client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_from_a_password_file(tls: ServerTls, tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(PASSWORD + "\n")  # as a mounted Secret often is
    s = settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="bob",
        kafka_sasl_password_file=str(secret_file),
        kafka_ssl_ca_file=str(tls.ca_file),
    )
    kwargs = s.kafka_security().client_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bob",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    for shown in (repr(s), str(s.model_dump()), repr(s.kafka_security())):
        assert PASSWORD not in shown


def test_mutual_tls_without_sasl(tls: ServerTls) -> None:
    s = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=str(tls.ca_file),
        kafka_ssl_cert_file=str(tls.cert_file),
        kafka_ssl_key_file=str(tls.key_file),
    )
    kwargs = s.kafka_security().client_kwargs()
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "CONVOSTREAM_KAFKA_SASL_PASSWORD (or _FILE) is required",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "{cert}"},
            "CONVOSTREAM_KAFKA_SSL_CERT_FILE and CONVOSTREAM_KAFKA_SSL_KEY_FILE go together",
        ),
        (
            {"kafka_ssl_ca_file": "{ca}"},
            "TLS files are set but CONVOSTREAM_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "{junk}"},
            "a TLS file cannot be used",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": PASSWORD,
                "kafka_sasl_password_file": "{junk}",
            },
            "set CONVOSTREAM_KAFKA_SASL_PASSWORD or CONVOSTREAM_KAFKA_SASL_PASSWORD_FILE, not both",
        ),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "CONVOSTREAM_KAFKA_SASL_MECHANISM"),
    ],
)
def test_contradictions_are_start_up_errors(
    tls: ServerTls, tmp_path: Path, values: dict[str, str], says: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    files = {"cert": str(tls.cert_file), "ca": str(tls.ca_file), "junk": str(junk)}
    with pytest.raises(ConfigError) as caught:
        settings(**{k: v.format(**files) for k, v in values.items()})
    assert caught.value.exit_code == 2
    assert says in caught.value.message
    assert PASSWORD not in caught.value.message


def test_passwords_are_redacted_from_logs(tmp_path: Path) -> None:
    registry_secret = tmp_path / "registry-password"
    registry_secret.write_text("registry-pw-77aa")
    s = settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password=PASSWORD,
        schema_registry_username="key",
        schema_registry_password_file=str(registry_secret),
    )
    runtime.setup(s)
    assert logs.redact(f"a {PASSWORD} b registry-pw-77aa") == "a *** b ***"


@pytest.fixture
def server_tls(tls: ServerTls) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


async def test_registry_over_https_with_basic_auth(
    tls: ServerTls, server_tls: ssl.SSLContext, tmp_path: Path
) -> None:
    """Credentials and CA from the settings, none in the URL: the readiness check and the
    serde's registration both get through; a wrong password or an unknown CA does not."""
    secret = tmp_path / "registry-password"
    secret.write_text("password\n")
    async with fake_registry_server(server_tls) as (fake, url_with_credentials):
        url = url_with_credentials.replace("user:password@", "")
        s = settings(
            schema_registry_url=url,
            schema_registry_username="user",
            schema_registry_password_file=str(secret),
            schema_registry_ca_file=str(tls.ca_file),
        )
        access = s.registry_access()
        assert await registry_problem(url, access) is None
        serde = await open_serde(url, CATALOGUE, access=access)
        await serde.close()
        assert fake.subjects  # registered over HTTPS with basic auth
        wrong = RegistryAccess("user", SecretStr("nope"), tls.ca_file)
        assert await registry_problem(url, wrong) == "schema registry answered HTTP 401"
        untrusted = RegistryAccess("user", SecretStr("password"))
        problem = await registry_problem(url, untrusted)
        assert problem is not None
        assert problem.startswith("schema registry unreachable")
