"""Before an iteration image is built: can the base image's runtime run this handler.py?

    python -m llmkit.base_image DOCKER BASE_IMAGE HANDLER

handler.py states the runtime API it was written for (`require("1.0")`); the base image
carries its runtime's API as a label. Exits 1, naming both, when they do not fit: the
iteration image would build, then every worker would refuse to start. The standard
library only, so it runs without the kit's venv (SKIP_EXPORT=1).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from llmkit.runtime.versions import IMAGE_LABEL, mismatch


def handler_api(path: Path) -> str:
    found = re.search(r'^    require\("([^"]+)"\)', path.read_text(), re.MULTILINE)
    if not found:
        raise SystemExit(f"{path} states no runtime API (no require(...) in its header): "
                         f"export it again with `make export-handler`")
    return found[1]


def image_api(docker: str, image: str) -> str:
    inspect = [docker, "image", "inspect", "--format",
               f'{{{{ index .Config.Labels "{IMAGE_LABEL}" }}}}', image]
    result = subprocess.run(inspect, capture_output=True, text=True)
    if result.returncode != 0:  # not here yet: fetch it, as the build would
        subprocess.run([docker, "pull", image], check=False)
        result = subprocess.run(inspect, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"cannot inspect the base image {image}: {result.stderr.strip()}")
    label = result.stdout.strip()
    if label in ("", "<no value>"):
        raise SystemExit(f"the base image {image} has no {IMAGE_LABEL} label: it predates the "
                         f"kit's runtime package; rebuild it with `make image`")
    return label


def main(argv: list[str]) -> int:
    docker, image, handler = argv
    wanted, have = handler_api(Path(handler)), image_api(docker, image)
    reason = mismatch(wanted, have)
    if reason:
        print(f"error: {image}: {reason}", file=sys.stderr)
        return 1
    print(f"==> {image} runs runtime API {have}; {handler} needs {wanted}: fits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
