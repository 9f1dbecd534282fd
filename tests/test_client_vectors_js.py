"""The page's JavaScript against every conformance vector, through Node's test runner.

`tests/js/client_vectors.test.mjs` runs each vector of client_vectors.json against the
page's ES modules (ui/static); this runs it in a subprocess so that `pytest` (and `make
test`) turns red when the JavaScript fails a vector. Without Node the test is skipped,
except under `make test` (CHATBRIDGE_REQUIRE_BROWSER=1), where it fails, as the browser
tests do: `make test` installs Debian's nodejs when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jupyter_chatbridge.testing.vectors import load_vectors

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("CHATBRIDGE_REQUIRE_BROWSER") == "1"


def test_the_page_modules_pass_every_client_vector() -> None:
    node = shutil.which("node")
    if node is None:
        why = "node is missing: `apt-get install -y nodejs` (make test does it)"
        if REQUIRED:
            pytest.fail(f"the JavaScript vector tests cannot run: {why}")
        pytest.skip(why)
    result = subprocess.run(
        [node, "--test", "tests/js/"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test tests/js/ failed:\n{output}"
    # Every vector ran as its own subtest (plus the coverage check): none was left out.
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed is not None, output
    assert int(passed.group(1)) >= len(load_vectors()) + 1, output
