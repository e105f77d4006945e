"""Ed25519 signatures over module digests.

What is signed is the module's content digest (``sha256:<hex>``) behind a fixed context
prefix, so a signature can never be mistaken for one over some other kind of message, and a
module changed by one byte has another digest and no valid signature. Keys are identified by
the first 16 hex characters of the sha256 of the raw 32-byte public key.

Files (all text, so they can be copied and reviewed):

* private key: PKCS#8 PEM (``iotwasm keygen``), mode 0600
* public key: SubjectPublicKeyInfo PEM
* signature: JSON ``{"digest", "key_id", "signature"}`` (base64), written next to the module as
  ``<module>.sig`` by ``iotwasm sign``

`SignatureStore` keeps the signatures a registry has seen (one SQLite file beside the module
index), so a node checks them again whenever it loads a module, not only at upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError
from ..sqlite import open_db

CONTEXT = b"iotwasm module signature v1\n"


class SignatureError(ConfigError):
    """A module's signature is missing, malformed, untrusted or does not match its digest."""

    kind = "signature"
    title = "Signature refused"


@dataclass(frozen=True)
class Signature:
    digest: str
    key_id: str
    signature: bytes

    def to_json(self) -> str:
        return json.dumps({"digest": self.digest, "key_id": self.key_id,
                           "signature": base64.b64encode(self.signature).decode()})

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "signature") -> "Signature":
        try:
            d = json.loads(text)
            return cls(str(d["digest"]), str(d["key_id"]), base64.b64decode(d["signature"], validate=True))
        except (ValueError, KeyError, TypeError) as e:
            raise SignatureError(f"{where}: not a signature document ({type(e).__name__}: {e})") from None


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
            public_pem(private.public_key()))


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(pem: bytes, where: str = "private key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{where}: not a PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{where}: not an Ed25519 key")
    return key


def load_public(pem: bytes | str, where: str = "public key") -> Ed25519PublicKey:
    if isinstance(pem, str):
        pem = pem.encode()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{where}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where}: not an Ed25519 key")
    return key


def sign_digest(private: Ed25519PrivateKey, digest: str) -> Signature:
    return Signature(digest, key_id(private.public_key()), private.sign(CONTEXT + digest.encode()))


def verify(sig: Signature, digest: str, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check `sig` for the module `digest` against `trusted` keys (by key id); return the key
    id, or raise SignatureError saying exactly why not."""
    if sig.digest != digest:
        raise SignatureError(f"signature is for {sig.digest}, not for this module {digest} "
                             "(module changed after signing?)")
    key = trusted.get(sig.key_id)
    if key is None:
        raise SignatureError(f"signed by key {sig.key_id}, which is not trusted here")
    try:
        key.verify(sig.signature, CONTEXT + digest.encode())
    except InvalidSignature:
        raise SignatureError(f"signature by key {sig.key_id} does not verify for {digest} "
                             "(tampered module or signature)") from None
    return sig.key_id


def verify_any(sigs: list[Signature], digest: str, trusted: dict[str, Ed25519PublicKey]) -> str:
    """The first signature that verifies wins; otherwise the most telling reason is raised."""
    if not sigs:
        raise SignatureError(f"module {digest} is not signed and signatures are required")
    reasons = []
    for s in sigs:
        try:
            return verify(s, digest, trusted)
        except SignatureError as e:
            reasons.append(str(e))
    raise SignatureError("; ".join(reasons))


class SignatureStore:
    """The signatures known for each module digest (SQLite, thread-safe)."""

    def __init__(self, path: str | Path):
        # FULL: a signature accepted with a module must not vanish while the module stays
        self._db = open_db(path, synchronous="FULL", what="module signatures",
                           schema="CREATE TABLE IF NOT EXISTS signatures (digest TEXT NOT NULL, "
                                  "key_id TEXT NOT NULL, signature BLOB NOT NULL, added REAL NOT NULL, "
                                  "PRIMARY KEY (digest, key_id))")
        self._lock = threading.Lock()

    def add(self, sig: Signature) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO signatures VALUES (?,?,?,?)",
                             (sig.digest, sig.key_id, sig.signature, time.time()))

    def for_digest(self, digest: str) -> list[Signature]:
        with self._lock:
            rows = self._db.execute("SELECT digest, key_id, signature FROM signatures WHERE digest = ?",
                                    (digest,)).fetchall()
        return [Signature(*r) for r in rows]

    def remove(self, digest: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM signatures WHERE digest = ?", (digest,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
