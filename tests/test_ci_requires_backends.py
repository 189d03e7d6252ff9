"""CI's switch: with FEWSTEP_REQUIRE_BACKENDS=1 a test marked for a missing framework fails instead of
being skipped, so a skipped test can never count as a pass in CI."""

import os
import shutil
import subprocess
import sys


def _run(tmp_path, required: bool):
    shutil.copy(os.path.join(os.path.dirname(__file__), "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_needs_torch.py").write_text(
        "import pytest\n\n@pytest.mark.torch\ndef test_uses_torch():\n    import torch  # noqa: F401\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    torch: t\n    mindspore: m\n    parity: p\n")
    shadow = tmp_path / "shadow"
    shadow.mkdir(exist_ok=True)
    (shadow / "torch.py").write_text("raise ImportError('torch is not installed (simulated)')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow), "FEWSTEP_REQUIRE_BACKENDS": "1" if required else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_missing_framework_is_skipped_locally_and_fails_in_ci(tmp_path):
    local = _run(tmp_path, required=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = _run(tmp_path, required=True)
    assert ci.returncode == 1 and "FEWSTEP_REQUIRE_BACKENDS is set" in ci.stdout, ci.stdout
