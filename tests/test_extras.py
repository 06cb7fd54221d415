"""Optional dependencies: a missing extra is a one-line error naming `pip install 'genforge[EXTRA]'`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from genforge.errors import GenforgeError
from genforge.extras import MissingExtraError, require


def test_require_names_the_extra_and_passes_other_errors_through(tmp_path, monkeypatch):
    assert require("json", "serve").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"pip install 'genforge\[eval\]'") as e:
        require("genforge_surely_missing_module", "eval")
    assert isinstance(e.value, GenforgeError) and isinstance(e.value, ImportError)
    # a module that is installed but fails on one of *its* imports is a different problem: not blamed on the extra
    (tmp_path / "gf_half_installed.py").write_text("import gf_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("gf_half_installed", "eval")
    assert not isinstance(e.value, MissingExtraError) and e.value.name == "gf_missing_dependency"


@pytest.mark.parametrize("blocked, argv, extra", [
    ("fastapi", ["serve", "some/checkpoint"], "serve"),
    ("uvicorn", ["serve", "some/checkpoint"], "serve"),
])
def test_cli_without_an_extra_is_one_line(blocked, argv, extra, tmp_path):
    # sys.modules[name] = None makes `import name` fail as if the package were not installed
    code = (f"import sys; sys.modules[{blocked!r}] = None; from genforge.cli import main; "
            f"sys.exit(main({argv!r}))")
    root = str(Path(__file__).parents[1])  # this checkout's genforge, whatever the working directory
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    assert f"pip install 'genforge[{extra}]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_metrics_and_dedup_name_their_extras(monkeypatch):
    import genforge.data.dedup as dedup
    from genforge.eval import metrics

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(MissingExtraError, match=r"genforge\[eval\]"):
        metrics.bleu(["a b"], ["a b"])
    monkeypatch.setattr(dedup, "datasketch", None)
    monkeypatch.setitem(sys.modules, "datasketch", None)
    assert dedup.NearDeduper(backend="auto").backend == "builtin"  # the numpy fallback still works
    with pytest.raises(MissingExtraError, match=r"genforge\[data\]"):
        dedup.NearDeduper(backend="datasketch")
