"""Write the management API's OpenAPI document to docs/openapi.json (tests check it is current)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from iotwasm.api import ApiContext, create_app  # noqa: E402
from iotwasm.node import Node, NodeConfig  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        async def build() -> dict:
            node = Node(NodeConfig(data_dir=Path(d)))
            ctx = ApiContext(node, Path(d))
            try:
                return create_app(ctx).openapi()
            finally:
                ctx.close()
                node.runtime.close()
        spec = asyncio.run(build())
    out = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
    out.write_text(json.dumps(spec, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
