"""What an auditor's pinned keys accept: Ed25519 and P-256 PEM files side by side,
nothing else; old checkpoints (no ``alg``) are Ed25519."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from audit.errors import ChainError
from audit.signing import ED25519, Checkpoint, CheckpointSigner, TrustedKeys, public_pem


def _pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def test_pem_files_of_both_kinds_and_old_checkpoints(tmp_path: Path) -> None:
    ed = CheckpointSigner.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ed.pem").write_bytes(ed.public_pem())
    (tmp_path / "es.pem").write_bytes(public_pem(p256.public_key()))
    trusted = TrustedKeys.from_pem_files([tmp_path / "ed.pem", tmp_path / "es.pem"])
    assert len(trusted.key_ids) == 2
    cp = ed.sign(5, "a" * 64)
    old_style = {k: v for k, v in cp.details().items() if k not in ("alg", "key_version")}
    read = Checkpoint.from_details(old_style)
    assert read.alg == ED25519 and trusted.check(read) is None


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    ],
)
def test_other_public_keys_are_refused_by_name(
    tmp_path: Path, key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> None:
    path = tmp_path / "other.pem"
    path.write_bytes(_pem(key))
    with pytest.raises(ChainError, match="neither an Ed25519 nor a P-256"):
        TrustedKeys.from_pem_files([path])


def test_unknown_algorithm_in_a_checkpoint_is_malformed() -> None:
    cp = CheckpointSigner.generate().sign(1, "b" * 64).details()
    with pytest.raises(ChainError, match="unknown algorithm"):
        Checkpoint.from_details({**cp, "alg": "none"})
