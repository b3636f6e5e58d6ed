"""The model store format shared by ``training`` (writer) and ``service`` (reader)."""

from store_format.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Gate,
    IntegrityError,
    Manifest,
    ManifestError,
    QualityCheck,
    TensorSpec,
    latest_version,
    list_models,
    list_versions,
    load_verified,
    publish,
    read_manifest,
    sha256_of,
    verify,
)

__all__ = [
    "MANIFEST_FILE",
    "MODEL_FILE",
    "Gate",
    "IntegrityError",
    "Manifest",
    "ManifestError",
    "QualityCheck",
    "TensorSpec",
    "latest_version",
    "list_models",
    "list_versions",
    "load_verified",
    "publish",
    "read_manifest",
    "sha256_of",
    "verify",
]
