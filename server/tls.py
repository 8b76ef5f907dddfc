"""The server's TLS certificates, re-read from their files when they change.

A platform rotates certificates by replacing the files; the server must serve
the new pair to new connections without a restart. grpc's dynamic server
credentials ask a fetcher for the configuration before every handshake, so
the fetcher has to be cheap: it compares each file's identity (device,
inode, size, modification time) with what was last loaded and reads the files
only when one of them changed.

A replacement that fails to load, or whose certificate and key are not one
pair (a rotation caught half-written, or a mistake), is ignored with one
warning per change and the pair already loaded keeps serving. At start there
is no pair to fall back on, so a bad one is a ``CertificateError`` naming the
option.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

log = logging.getLogger(__name__)

FileIdentity = tuple[int, int, int, int]
"""(device, inode, size, modification time in ns) of one file."""


class CertificateError(Exception):
    """A certificate file the server cannot serve; ``option`` names its setting."""

    def __init__(self, option: str, reason: str) -> None:
        self.option = option
        self.reason = reason
        super().__init__(f"{option}: {reason}")


@dataclass(frozen=True, kw_only=True, slots=True)
class CertificateFiles:
    """Where the server's certificate chain, its key and (for mutual TLS)
    the CAs of client certificates are."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def by_option(self) -> tuple[tuple[str, Path], ...]:
        """Each file with the option that names it."""
        named = (("--tls-cert", self.cert), ("--tls-key", self.key))
        return named if self.client_ca is None else (*named, ("--tls-client-ca", self.client_ca))


@dataclass(frozen=True, slots=True)
class _Loaded:
    identities: tuple[FileIdentity, ...]
    generation: int
    configuration: grpc.ServerCertificateConfiguration


class ServerCertificates:
    """The loaded certificate configuration, reloaded when its files change.

    Safe to call from grpc's handshake threads; one instance serves any
    number of ports, each through its own :meth:`credentials`.
    """

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        identities = self._identities()
        if identities is None:
            raise CertificateError("--tls-cert", "a certificate file cannot be read")
        self._loaded = _Loaded(identities, 0, _configuration(files))
        self._refused: tuple[FileIdentity, ...] | None = None

    @property
    def mutual(self) -> bool:
        """Whether callers must present a client certificate."""
        return self._files.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials for one port that pick up new files at the
        next handshake."""
        served = self._loaded.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            current = self._current()
            if current.generation == served:
                return None
            served = current.generation
            return current.configuration

        return grpc.dynamic_ssl_server_credentials(
            self._loaded.configuration,
            fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"; the stub omits it
            require_client_authentication=self.mutual,
        )

    def _current(self) -> _Loaded:
        # The configuration to serve now, reloaded first if a file changed.
        identities = self._identities()
        with self._lock:
            loaded = self._loaded
            if identities is None or identities in (loaded.identities, self._refused):
                return loaded
            try:
                configuration = _configuration(self._files)
            except CertificateError as exc:
                self._refused = identities
                log.warning(
                    "certificate files changed but cannot be served; keeping the loaded pair",
                    extra={"option": exc.option, "reason": exc.reason},
                )
                return loaded
            self._loaded = _Loaded(identities, loaded.generation + 1, configuration)
            self._refused = None
            log.info("certificate files reloaded")
            return self._loaded

    def _identities(self) -> tuple[FileIdentity, ...] | None:
        try:
            stats = [os.stat(path) for _, path in self._files.by_option]
        except OSError:
            # Between the removal and the rename of a rotation: the next
            # handshake looks again.
            return None
        return tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


def _configuration(files: CertificateFiles) -> grpc.ServerCertificateConfiguration:
    cert_pem = _read("--tls-cert", files.cert)
    key_pem = _read("--tls-key", files.key)
    chain = _certificates("--tls-cert", cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # The library's message is not passed on: it could describe the key.
        raise CertificateError(
            "--tls-key", f"{files.key} is not an unencrypted PEM private key"
        ) from None
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise CertificateError(
            "--tls-key", f"{files.key} is not the key of the certificate in {files.cert}"
        )
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read("--tls-client-ca", files.client_ca)
        _certificates("--tls-client-ca", client_ca)
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], client_ca)


def _read(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(option, f"cannot read {path}: {exc.strerror}") from None


def _certificates(option: str, pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(option, "holds no PEM certificate") from None


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
