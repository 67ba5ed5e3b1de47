"""Installing oss-grpo must not change what `import kernels` (Hugging Face's kernel hub), bitsandbytes or
transformers see, neither from another folder nor with the repo root as the working directory (where `python -c`
and `python -m` put the root first on sys.path, next to our `kernels/` folder)."""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import importlib.util, json
import bitsandbytes, transformers
from transformers.utils import import_utils
spec = importlib.util.find_spec("kernels")
print(json.dumps({
    "bitsandbytes": bitsandbytes.__file__,
    "transformers": transformers.__file__,
    "kernels_available": import_utils.is_kernels_available(),
    "kernels_package": import_utils._is_package_available("kernels", return_version=True),
    "kernels_origin": spec.origin if spec and spec.origin else None,
}))
"""


def probe(cwd: Path, extra_path: Path | None = None) -> dict:
    env_path = f"{extra_path}" if extra_path else ""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": env_path})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_probe_is_the_same_from_the_repo_root(tmp_path: Path) -> None:
    assert probe(REPO) == probe(tmp_path)


def test_an_installed_kernel_hub_package_wins_over_our_folder(tmp_path: Path) -> None:
    # A stand-in for Hugging Face's `kernels` (a package plus its dist-info, as pip installs it), at a version the
    # installed transformers accepts (5.19 takes 0.17-0.18, 5.23 0.18.2-0.19).
    from transformers.utils import import_utils

    version = import_utils.KERNELS_MIN_VERSION
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("HUB = True\n")
    (site / f"kernels-{version}.dist-info").mkdir()
    (site / f"kernels-{version}.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kernels\nVersion: {version}\n")
    elsewhere, at_root = probe(tmp_path, site), probe(REPO, site)
    assert at_root == elsewhere
    assert at_root["kernels_origin"] == str(site / "kernels" / "__init__.py")
    assert at_root["kernels_available"] is True


def test_only_oss_grpo_is_installed_at_top_level() -> None:
    tops = {name for name, dists in importlib.metadata.packages_distributions().items() if "oss-grpo" in dists}
    assert tops == {"oss_grpo"}
    assert not (REPO / "kernels" / "__init__.py").exists()  # a regular package here would shadow the hub's
