"""How the image stage hands over what it stores: a conforming JPEG kept as it is (`build.reencode`), and a
local pool's tar members passed through spill files instead of the pool's pipe."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_build import _config, _snapshot, make_sources
from tolclip.core.taxonomy import Taxon
from tolclip.curate import build as build_module
from tolclip.curate.build import build
from tolclip.curate.config import BuildError
from tolclip.curate.image_worker import init_worker, process_chunk, unspill
from tolclip.curate.splits import make_key

from helpers import jpeg_bytes

SIZE = 32


def _photo(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    # A smooth upscaled pattern with its top-left corner marked white: orientation shows in the output.
    image = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    image.paste((255, 255, 255), (0, 0, size[0] // 4, size[1] // 4))
    return image


# file name -> (bytes, kept as they are under reencode=auto)
def _files() -> dict[str, tuple[bytes, bool]]:
    return {
        "ready.jpg": (jpeg_bytes(_photo(1), 75), True),  # the stored size, coarser than q95
        "fine.jpg": (jpeg_bytes(_photo(2), 100), False),  # finer than q95
        "large.jpg": (jpeg_bytes(_photo(3, (48, 48)), 75), False),  # resized
        "rotated.jpg": (jpeg_bytes(_photo(4).rotate(180), 75, orientation=3), False),  # upside down on disk
    }


@pytest.fixture
def jpeg_source(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "jpegs"
    (root / "corvus").mkdir(parents=True)
    for name, (data, _) in _files().items():
        (root / "corvus" / name).write_bytes(data)
    names = root / "names.csv"
    names.write_text("label,scientific_name\ncorvus,Corvus corax\n")
    return {"root": root, "names": names}


def _jpeg_config(src: dict[str, Path], out: Path, **over: object) -> dict:
    return {
        "out_dir": str(out),
        "sources": [
            {
                "kind": "image_folder",
                "source": "birds",
                "root": str(src["root"]),
                "names_table": str(src["names"]),
            }
        ],
        "resize": {"mode": "squash", "size": SIZE},
        "splits": {"train": 100},
        "workers": 0,
        "progress": False,
        **over,
    }


def _stored(out: Path) -> dict[str, bytes]:
    """Sample key -> the stored image bytes."""
    found = {}
    for shard in sorted(out.glob("*/shard-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    found[member.name.partition(".")[0]] = tar.extractfile(member).read()
    return found


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "pool-1"])
def test_a_jpeg_already_as_stored_is_kept_byte_for_byte_and_others_are_re_encoded(
    jpeg_source: dict[str, Path], tmp_path: Path, workers: int
) -> None:
    out = tmp_path / "out"
    build(_jpeg_config(jpeg_source, out, workers=workers))
    stored = _stored(out)
    for name, (data, kept) in _files().items():
        blob = stored[make_key("birds", f"corvus/{name}")]
        assert (blob == data) is kept, name
        with Image.open(io.BytesIO(blob)) as image:
            assert image.size == (SIZE, SIZE)
            corner = np.asarray(image.convert("RGB"))[1, 1]
        assert corner.min() > 200, f"{name}: the white corner is top-left (upright)"
    assert not (out / "cache").exists()


def test_reencode_always_re_encodes_every_image_and_the_setting_is_checked(
    jpeg_source: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "always"
    build(_jpeg_config(jpeg_source, out, reencode="always"))
    ready = _files()["ready.jpg"][0]
    assert _stored(out)[make_key("birds", "corvus/ready.jpg")] != ready
    with pytest.raises(BuildError, match=r"reencode must be one of \['auto', 'always'\], not 'never'"):
        build(_jpeg_config(jpeg_source, tmp_path / "bad", reencode="never"))


def test_a_pool_spills_tar_members_and_the_build_equals_the_in_process_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = make_sources(tmp_path)
    reference = tmp_path / "inline"
    build(_config(sources, reference, workers=0))
    spilled: list[int] = []
    real = build_module.unspill

    def counting(results):  # in the driver
        path = real(results)
        if any(r["ok"] for r in results):  # a chunk with a stored image came back through a file
            spilled.append(path is not None and all("blob" in r for r in results if r["ok"]))
        return path

    monkeypatch.setattr(build_module, "unspill", counting)
    out = tmp_path / "pool"
    build(_config(sources, out, workers=1, chunk_size=2, keep_cache=True))
    assert spilled and all(spilled)
    assert _snapshot(out) == _snapshot(reference)
    assert (out / "cache" / "processed.jsonl").exists() and not (out / "cache" / "spill").exists()


def test_spill_round_trip_and_its_errors(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    paths = []
    for i in range(3):
        paths.append(root / f"{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes(_photo(i), 75))
    paths.append(root / "broken.jpg")
    paths[-1].write_bytes(b"not a JPEG")
    taxon = Taxon.clean(genus="Corvus", species="corax")
    tasks = [(f"k{i}", str(p), taxon, "s", str(i)) for i, p in enumerate(paths)]
    settings = {
        "mode": "squash",
        "size": SIZE,
        "quality": 95,
        "max_pixels": 10**6,
        "reduced_decode": True,
        "reencode": "auto",
        "exclusion": None,
    }
    init_worker({**settings, "spill_dir": None})
    direct = process_chunk(tasks)
    spill = tmp_path / "spill"
    spill.mkdir()
    init_worker({**settings, "spill_dir": str(spill)})
    results = process_chunk(tasks)
    assert all("blob" not in r for r in results) and [p.name for p in spill.iterdir()] == ["k0.part"]
    assert unspill(results) == spill / "k0.part"
    assert [bytes(r["blob"]) if "blob" in r else None for r in results] == [r.get("blob") for r in direct]
    assert not results[-1]["ok"] and "spill" not in results[-1]

    results = process_chunk(tasks)
    (spill / "k0.part").unlink()
    with pytest.raises(BuildError, match=r"cannot read the image stage's spill file .*k0\.part"):
        unspill(results)
    init_worker({**settings, "spill_dir": str(tmp_path / "gone")})
    with pytest.raises(BuildError, match=r"cannot write the image stage's spill file .*gone"):
        process_chunk(tasks)


def test_bad_dedup_partitions_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    sources = make_sources(tmp_path)
    for value, message in [(-1, "dedup_partitions must be an integer >= 0, not -1"), ("2", "not '2'")]:
        with pytest.raises(BuildError, match=message):
            build(_config(sources, tmp_path / "out", dedup_partitions=value))
    with pytest.raises(BuildError, match="dedup_partitions needs max_distance <= 7, not 8"):
        build(_config(sources, tmp_path / "out", dedup_partitions=2, max_distance=8))
    assert not (tmp_path / "out").exists() or not any(p.name != ".lock" for p in (tmp_path / "out").iterdir())
