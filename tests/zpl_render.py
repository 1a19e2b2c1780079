"""Render ZPL with a renderer we did not write and decode barcodes with a decoder we did not write.

The same independent check as ``shared/tools/zpl_check``, built from the same public packages:

* rendering: npm package ``zpl-renderer-js`` (Zebrash compiled to WASM) run by ``node``; installed once
  with ``npm install --prefix`` into ``$ZPL_RENDERER_DIR`` (default ``~/.cache/packline-zpl-renderer``);
* decoding: PyPI package ``zxing-cpp`` on the PNG opened with Pillow.

Missing tools skip the test locally and fail it under ``CI=true`` (see :func:`tests.support.need`).
Render many labels with :func:`render_many` so node and the ~8 MB WASM load only once.
"""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import io
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support import need, need_binary

RENDERER_VERSION = "3.4.0"
LABEL_WIDTH_MM = 101.6  # 4 in
LABEL_HEIGHT_MM = 152.4  # 6 in

# stdin: {"labels": [zpl, ...], "widthMm", "heightMm", "dpmm"}; stdout: [[base64 png, ...], ...]
# (one inner list per input string: a string holding several ^XA..^XZ gives several PNGs).
_NODE_JS = r"""
const fs = require("node:fs");
const args = JSON.parse(fs.readFileSync(0, "utf8"));
const { ready } = require("zpl-renderer-js");
ready.then(async ({ api }) => {
  const out = [];
  for (const zpl of args.labels) {
    out.push(await api.zplToBase64MultipleAsync(zpl, args.widthMm, args.heightMm, args.dpmm));
  }
  process.stdout.write(JSON.stringify(out));
}).catch((e) => { console.error(String((e && e.stack) || e)); process.exit(2); });
"""


def renderer_dir() -> Path:
    return Path(os.environ.get("ZPL_RENDERER_DIR", Path.home() / ".cache" / "packline-zpl-renderer"))


def _installed_version(node_modules: Path) -> str | None:
    manifest = node_modules / "zpl-renderer-js" / "package.json"
    try:
        return str(json.loads(manifest.read_text("utf-8")).get("version"))
    except (OSError, ValueError):
        return None


def _ensure_renderer() -> Path:
    """Install zpl-renderer-js once (needs npm only the first time); return its node_modules.

    A lock file serialises concurrent test processes installing into the same directory."""
    node_modules = renderer_dir() / "node_modules"
    if _installed_version(node_modules) == RENDERER_VERSION:
        return node_modules
    npm = need_binary("npm")
    renderer_dir().mkdir(parents=True, exist_ok=True)
    with open(renderer_dir() / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(node_modules) != RENDERER_VERSION:
            subprocess.run(
                [npm, "install", "--prefix", str(renderer_dir()), "--no-audit", "--no-fund",
                 f"zpl-renderer-js@{RENDERER_VERSION}"],
                check=True, stdout=subprocess.DEVNULL, timeout=300,
            )
    return node_modules


def render_many(zpls: Sequence[str], dpmm: int = 8) -> list[list[bytes]]:
    """Render each ZPL string in ONE node process; one list of PNGs per input string."""
    node = need_binary("node")
    node_modules = _ensure_renderer()
    payload = json.dumps({"labels": list(zpls), "widthMm": LABEL_WIDTH_MM, "heightMm": LABEL_HEIGHT_MM,
                          "dpmm": dpmm})
    proc = subprocess.run(
        [node, "-e", _NODE_JS], input=payload, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, NODE_PATH=str(node_modules)),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"zpl-renderer-js failed ({proc.returncode}): {proc.stderr.strip()}")
    return [[base64.b64decode(png) for png in pngs] for pngs in json.loads(proc.stdout)]


def render_zpl_png(zpl: str, dpmm: int = 8) -> list[bytes]:
    """PNG per ^XA..^XZ label in ``zpl``, rendered at ``dpmm`` dots/mm on a 4x6 in canvas."""
    return render_many([zpl], dpmm)[0]


def decode_barcodes(png: bytes) -> list[tuple[str, str]]:
    """Every barcode zxing-cpp finds in ``png`` as (format, text), top to bottom."""
    need(importlib.util.find_spec("zxingcpp") is not None, "zxing-cpp is not installed (pip install zxing-cpp)")
    import zxingcpp
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        found = zxingcpp.read_barcodes(img)
    found.sort(key=lambda b: (b.position.top_left.y, b.position.top_left.x))
    return [(str(b.format).rsplit(".", 1)[-1], b.text) for b in found]
