"""``python -m dalle2 train clip|prior --preset <unknown>``: exit status 2 and one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_unknown_preset_is_a_one_line_usage_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        stage: subprocess.Popen(
            [sys.executable, "-m", "dalle2", "train", stage, "--preset", "huge", "--out", str(tmp_path / stage)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for stage in ("clip", "prior")  # both at once: each pays the torch import
    }
    for stage, process in runs.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (stage, stdout, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, (stage, stderr)
        assert lines[0].startswith("dalle2: error: unknown preset 'huge'; choose one of tiny, cpu, gpu"), stage
        assert not (tmp_path / stage).exists(), stage  # nothing written
