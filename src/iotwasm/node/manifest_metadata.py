"""Manifest metadata: the name, namespace and labels every kind carries, and the apiVersion.

Split from `manifests` (reading documents into the kinds); it sits below the modules of the
kinds, which all need it, so none of them imports another for it. `manifests` re-exports
`API_VERSION` and `NAME`.
"""

from __future__ import annotations

import re

from pydantic import field_validator

from ..pipeline.connectors.config import Strict

API_VERSION = "iotwasm.io/v1"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class Metadata(Strict):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = {}

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters")
        return v
