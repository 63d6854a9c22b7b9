"""TLS, mutual TLS and bearer tokens on a real gRPC channel, with a throwaway CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.sdk.trace import TracerProvider

from abkit.client import Client
from abkit.config import Settings
from abkit.core.model import Reason
from abkit.core.spec import experiment_from_dict
from abkit.infra.telemetry import Telemetry
from abkit.rpc.server import GrpcServer, build_server
from abkit.runtime import Runtime
from abkit.store.sql import SqlStore
from abkit.v1 import assignment_pb2 as pb
from abkit.v1 import assignment_pb2_grpc as pb_grpc
from tests.helpers import EXPERIMENT

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pair:
    key: bytes
    cert: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None, *, ca: bool = False
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Pair]:
    key = ec.generate_private_key(ec.SECP256R1())
    signing_key, issuer_name = issuer if issuer else (key, _name(subject))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, cert, Pair(pem_key, cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class Pki:
    ca: bytes
    server: Pair
    client: Pair
    stranger: Pair  # signed by another CA
    directory: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca_key, ca_cert, ca = _issue("abkit test CA", None, ca=True)
    _, _, server = _issue("localhost", (ca_key, ca_cert.subject))
    _, _, client = _issue("a-model-server", (ca_key, ca_cert.subject))
    other_key, other_cert, _ = _issue("someone else's CA", None, ca=True)
    _, _, stranger = _issue("intruder", (other_key, other_cert.subject))
    return Pki(ca.cert, server, client, stranger, tmp_path_factory.mktemp("pki"))


def serve(url: str, **overrides: object) -> tuple[GrpcServer, Runtime]:
    settings = Settings(database_url=url, writer_flush_seconds=0.02, **overrides)  # type: ignore[arg-type]
    runtime = Runtime(settings, SqlStore.from_url(url))
    runtime.experiments.apply(experiment_from_dict(EXPERIMENT), actor="t", start=True)
    runtime.start()
    server = build_server(settings, runtime, Telemetry(TracerProvider()), address="127.0.0.1:0")
    server.start()
    return server, runtime


@pytest.fixture
def tls_server(sqlite_url: str, pki: Pki) -> Iterator[tuple[GrpcServer, Runtime]]:
    server, runtime = serve(
        sqlite_url,
        tls_cert=pki.write("server.pem", pki.server.cert),
        tls_key=pki.write("server.key", pki.server.key),
    )
    yield server, runtime
    server.stop(grace=1)
    runtime.close()


@pytest.fixture
def mtls_server(sqlite_url: str, pki: Pki) -> Iterator[tuple[GrpcServer, Runtime]]:
    server, runtime = serve(
        sqlite_url,
        tls_cert=pki.write("server.pem", pki.server.cert),
        tls_key=pki.write("server.key", pki.server.key),
        tls_client_ca=pki.write("ca.pem", pki.ca),
    )
    yield server, runtime
    server.stop(grace=1)
    runtime.close()


def _call(channel: grpc.Channel, unit: str = "u1") -> grpc.StatusCode:
    stub = pb_grpc.AssignmentServiceStub(channel)
    try:
        stub.Assign(pb.AssignRequest(unit_id=unit), timeout=3)
        stub.Track(pb.TrackRequest(unit_id=unit, metric="conversion"), timeout=3)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _stored(runtime: Runtime) -> tuple[int, int]:
    assert runtime.flush(5)  # everything accepted so far is in the store: the counts are final
    with runtime.store.transaction() as tx:
        return sum(tx.exposures.counts("ranker-v2").values()), tx.events.count()


def test_tls_server_refuses_plaintext_and_serves_tls(
    tls_server: tuple[GrpcServer, Runtime], pki: Pki
) -> None:
    server, runtime = tls_server
    with grpc.insecure_channel(server.address) as plain:
        assert _call(plain) == grpc.StatusCode.UNAVAILABLE
    assert _stored(runtime) == (0, 0)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    with grpc.secure_channel(server.address, credentials) as secure:
        assert _call(secure) == grpc.StatusCode.OK
    with Client(server.address, timeout=3, root_certificates=pki.ca) as client:
        assert client.assign("u2", "ranker-v2", default="ranker-v1").error is None
    assert _stored(runtime) == (2, 1)


def test_mutual_tls_refuses_clients_without_a_valid_certificate(
    mtls_server: tuple[GrpcServer, Runtime], pki: Pki
) -> None:
    server, runtime = mtls_server
    no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    wrong_ca = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.stranger.key, certificate_chain=pki.stranger.cert
    )
    for credentials in (no_cert, wrong_ca):
        with grpc.secure_channel(server.address, credentials) as channel:
            assert _call(channel) == grpc.StatusCode.UNAVAILABLE
    assert _stored(runtime) == (0, 0)
    good = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=pki.client.key, certificate_chain=pki.client.cert
    )
    with grpc.secure_channel(server.address, good) as channel:
        assert _call(channel) == grpc.StatusCode.OK
    assert _stored(runtime) == (1, 1)


def test_tokens_guard_writes_and_optionally_assignment(sqlite_url: str) -> None:
    server, runtime = serve(sqlite_url, api_token="s3cret", api_token_for_assign=True)
    try:
        stub = pb_grpc.AssignmentServiceStub(grpc.insecure_channel(server.address))
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            for call in (
                lambda m: stub.Track(
                    pb.TrackRequest(unit_id="u", metric="conversion"), timeout=3, metadata=m
                ),
                lambda m: stub.TrackBatch(
                    pb.TrackBatchRequest(events=[pb.TrackRequest(unit_id="u", metric="c")]),
                    timeout=3,
                    metadata=m,
                ),
                lambda m: stub.Assign(pb.AssignRequest(unit_id="u"), timeout=3, metadata=m),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call(metadata)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _stored(runtime) == (0, 0)  # nothing written by a refused call
        with Client(server.address, timeout=3, token="s3cret") as client:
            assert client.assign("u", "ranker-v2", default="ranker-v1").reason is Reason.SPLIT
            assert client.track("u", "conversion")
        with Client(server.address, timeout=3, token="nope") as client:
            assert client.assign("u", "ranker-v2", default="ranker-v1").reason is Reason.ERROR
        assert _stored(runtime) == (1, 1)
    finally:
        server.stop(grace=1)
        runtime.close()


def test_assign_stays_open_by_default_when_a_token_is_set(sqlite_url: str) -> None:
    server, runtime = serve(sqlite_url, api_token="s3cret")
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssignmentServiceStub(channel)
            assert stub.Assign(pb.AssignRequest(unit_id="u"), timeout=3).assignments
            with pytest.raises(grpc.RpcError) as info:
                stub.Track(pb.TrackRequest(unit_id="u", metric="conversion"), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(grace=1)
        runtime.close()
