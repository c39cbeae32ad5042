"""GPU requests on the command line (crane.cli.gres, cbatch), pure: no cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crane.cli import cbatch, job_options
from crane.cli.common import EXIT_ARGS, CliError
from crane.cli.gres import alloc_text, gpu_spec, gres_text, parse_gpus, parse_gres

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize(
    ("text", "want"),
    [("gpu:2", (2, "")), ("gpu:a100:2", (2, "a100")), ("gpu", (1, "")), ("gpu:a100", (1, "a100")),
     ("gpu:v100-sxm2:4", (4, "v100-sxm2"))],
)  # fmt: skip
def test_parse_gres(text: str, want: tuple[int, str]) -> None:
    assert parse_gres(text) == want


@pytest.mark.parametrize(
    "text",
    ["gpu:0", "gpu:-1", "fpga:1", "gpu:a:b:1", "gpu:a100:0", "gpu:1,gpu:2", "gpu:x\x1b[31m:1", "", "gpu:99999",
     "GPU:1", "gpu:1.5"],
)  # fmt: skip
def test_parse_gres_refuses(text: str) -> None:
    with pytest.raises(CliError) as e:
        parse_gres(text)
    assert e.value.code == EXIT_ARGS and "\n" not in str(e.value)


def test_parse_gpus() -> None:
    assert parse_gpus("4") == (4, "")
    assert parse_gpus("a100:4") == (4, "a100")
    assert parse_gpus("gpu:a100:4") == (4, "a100")
    for bad in ("0", "-2", "a:b:c", "x"):
        with pytest.raises(CliError):
            parse_gpus(bad)


def test_gpu_spec_per_node_and_per_job() -> None:
    assert gpu_spec(None, None, None) == {}
    assert gpu_spec("gpu:2", None, 3) == {"gpus_per_node": 2}  # --gres is per node
    assert gpu_spec(None, "4", 2) == {"gpus_per_node": 2}  # --gpus is per job
    assert gpu_spec(None, "a100:2", None) == {"gpus_per_node": 2, "gpu_type": "a100"}
    with pytest.raises(CliError, match="evenly over 2 nodes"):
        gpu_spec(None, "3", 2)
    with pytest.raises(CliError, match="not both"):
        gpu_spec("gpu:1", "1", None)


def test_views_text() -> None:
    assert gres_text({"gres": "gpu:a100:2"}) == "gpu:a100:2"
    assert gres_text({"gpus_per_node": 1}) == "gpu:1"
    assert gres_text({}) == ""
    assert alloc_text({"gpu_alloc": {"crane04": [0], "crane03": [0, 1]}}) == "crane03:0,1;crane04:0"
    assert alloc_text({"gpu_alloc": {}}) == ""


def test_cbatch_spec_from_options_and_directives(tmp_path: object) -> None:
    script = "#!/bin/sh\n#CBATCH --gres gpu:a100:1\n#CBATCH -N 2\nhostname\n"
    opts = cbatch.merge_options(cbatch._parse_script_args(cbatch.script_options(script)), {})
    spec = job_options.build_spec(opts, script, None)
    assert spec["gpus_per_node"] == 1 and spec["gpu_type"] == "a100" and spec["nnodes"] == 2
    # the command line's GPU request replaces the script's (no "not both" error)
    opts = cbatch.merge_options(cbatch._parse_script_args(cbatch.script_options(script)), {"gpus": "4"})
    spec = job_options.build_spec(opts, script, None)
    assert spec["gpus_per_node"] == 2 and "gpu_type" not in spec
    assert "gpus_per_node" not in job_options.build_spec({}, None, "true")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--gres", "fpga:1"], 'unknown generic resource "fpga"'), (["--gres", "gpu:0"], "GPU count"),
     (["-N", "2", "--gpus", "3"], "evenly over 2 nodes")],
)  # fmt: skip
def test_cbatch_refuses_with_one_line(argv: list[str], needle: str, tmp_path: object) -> None:
    """Refused before any request: no cluster needed; exit 2, one stderr line."""
    env = {**os.environ, "CRANE_CONF": os.path.join(str(tmp_path), "none.yaml")}
    r = subprocess.run([os.path.join(BIN, "cbatch"), *argv, "--wrap", "true"], capture_output=True, text=True,
                       env=env, timeout=60)  # fmt: skip
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbatch: error:") and needle in lines[0], r.stderr
