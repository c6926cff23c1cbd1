import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tolclip.core.taxonomy import Taxon
from tolclip.core.tokenizer import get_tokenizer
from tolclip.data.datamodule import ShardDataModule, expand_shards
from tolclip.data.images import encode_jpeg
from tolclip.data.shards import iter_records, shard_spec, write_shards

from helpers import TAXA, add_raw_member, colour_image, make_samples, shard_datamodule


def test_writer_format_matches_tol10m_names(tmp_path):
    paths = write_shards(make_samples(25), tmp_path, max_count=10)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert expand_shards(shard_spec(paths)) == [str(p) for p in paths]
    rec = next(iter_records(str(paths[0])))
    assert {
        "jpg",
        "taxon.json",
        "com.txt",
        "sci.txt",
        "taxon.txt",
        "sci_com.txt",
        "taxon_com.txt",
        "scientific_name.txt",
        "taxonomic_name.txt",
        "common_name.txt",
    } <= set(rec)
    meta = json.loads(rec["taxon.json"])
    assert meta["class"] == "Aves" and meta["source"] == "test"
    assert rec["sci.txt"] == b"a photo of Corvus corax."


def test_expand_shards_glob_brace_list_and_missing(small_shards):
    globbed = expand_shards(str(small_shards / "train" / "shard-*.tar"))
    assert len(globbed) == 4
    assert expand_shards(str(small_shards / "train" / "shard-{000000..000003}.tar")) == globbed
    assert expand_shards(globbed[:2]) == globbed[:2]
    assert expand_shards("pipe:cat x.tar") == ["pipe:cat x.tar"]
    with pytest.raises(FileNotFoundError, match="not found"):
        expand_shards(str(small_shards / "train" / "shard-{000000..000009}.tar"))
    with pytest.raises(FileNotFoundError, match="no shards"):
        expand_shards(str(small_shards / "nowhere" / "*.tar"))


def _dm(root: Path, **kw) -> ShardDataModule:
    args = dict(
        train_shards=str(root / "train" / "shard-*.tar"),
        eval_sets={"val": str(root / "val" / "*.tar")},
        batch_size=4,
        shuffle_buffer=8,
    )
    return shard_datamodule(**{**args, **kw})


def test_train_batches_tokenized_in_stream(small_shards):
    batches = list(_dm(small_shards).train_dataloader())
    assert len(batches) == 10  # 40 samples, batch 4, nothing dropped
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["text"].shape == (4, 77)
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == 40
    tok = get_tokenizer()
    by_key = {f"s{i:05d}": TAXA[i % 4] for i in range(40)}
    assert torch.equal(b["text"][0], tok(f"a photo of {by_key[b['key'][0]].scientific_name}.")[0])
    assert _dm(small_shards).skipped_samples == 0


def test_mixed_carries_all_five_types(small_shards):
    b = next(iter(_dm(small_shards, text_type="mixed").train_dataloader()))
    assert b["text"].shape == (4, 5, 77)
    assert len({tuple(t.tolist()) for t in b["text"][0]}) >= 3  # the five captions differ


def test_resampled_epoch_length_and_workers(small_shards):
    dm = _dm(small_shards, resampled=True, epoch_samples=64, num_workers=2)
    loader = dm.train_dataloader()
    assert len(loader) == 16
    batches = list(loader)
    assert len(batches) == 16 and all(b["image"].shape[0] == 4 for b in batches)


def test_shards_split_across_workers_without_duplicates(small_shards):
    keys = [k for b in _dm(small_shards, num_workers=2).train_dataloader() for k in b["key"]]
    assert sorted(keys) == sorted(f"s{i:05d}" for i in range(40))


def test_eval_loader_yields_taxa(small_shards):
    batches = list(_dm(small_shards).eval_dataloader("val"))
    taxa = [t for b in batches for t in b["taxon"]]
    assert len(taxa) == 12 and all(isinstance(t, Taxon) for t in taxa)
    with pytest.raises(KeyError, match="no eval set"):
        _dm(small_shards).eval_dataloader("test")


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    paths = write_shards(make_samples(10), tmp_path / "train", max_count=100)
    good = encode_jpeg(colour_image(99))
    # A truncated JPEG with valid captions, and a sample with an image but no captions or taxon.
    add_raw_member(paths[0], "bad00001.jpg", good[: len(good) // 3])
    add_raw_member(paths[0], "bad00001.sci.txt", b"a photo of Corvus corax.")
    add_raw_member(paths[0], "bad00002.jpg", good)
    # A sample missing only its caption file is rebuilt from taxon.json, not dropped.
    add_raw_member(paths[0], "ok00003.jpg", good)
    add_raw_member(paths[0], "ok00003.taxon.json", json.dumps(TAXA[2].to_dict()).encode())
    dm = shard_datamodule(str(paths[0]))
    batches = list(dm.train_dataloader())
    keys = [b["key"][0] for b in batches]
    assert len(keys) == 11 and "ok00003" in keys and "bad00001" not in keys
    assert dm.skipped_samples == 2


def test_truncated_shard_is_skipped_not_fatal(tmp_path):
    paths = write_shards(make_samples(20), tmp_path / "train", max_count=10)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # cut the second shard mid-member
    dm = shard_datamodule([str(p) for p in paths], text_type="com")
    batches = list(dm.train_dataloader())
    assert 10 <= len(batches) < 20
    assert dm.skipped_samples >= 1


def test_skips_counted_across_worker_processes(tmp_path):
    paths = write_shards(make_samples(8), tmp_path / "train", max_count=4)
    good = encode_jpeg(colour_image(99))
    for p in paths:
        add_raw_member(p, f"bad{p.stem[-1]}.jpg", good[:100])
        add_raw_member(p, f"bad{p.stem[-1]}.sci.txt", b"x")
    dm = shard_datamodule([str(p) for p in paths], batch_size=2, num_workers=2)
    assert sum(b["image"].shape[0] for b in dm.train_dataloader()) == 8
    assert dm.skipped_samples == 2


def test_bad_config_is_a_clear_error(small_shards):
    with pytest.raises(ValueError, match="unknown text type"):
        _dm(small_shards, text_type="latin")
    with pytest.raises(ValueError, match="epoch_samples"):
        _dm(small_shards, resampled=True, epoch_samples=None)


def test_epochs_differ_but_replay_identically(small_shards):
    def keys(epoch):
        dm = _dm(small_shards, resampled=True, epoch_samples=16, num_workers=1)
        loader = dm.train_dataloader()
        dm.set_epoch(epoch)
        return [(k, float(b["image"][i].sum())) for b in loader for i, k in enumerate(b["key"])]

    assert keys(0) == keys(0)  # same epoch: same samples and same augmentations
    assert keys(0) != keys(1)


def test_shards_split_across_ranks_and_workers(small_shards, monkeypatch):
    import tolclip.data.stream as dmod

    dm = _dm(small_shards)
    stream = dm.train_stream()
    seen = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setattr(dmod, "_worker_info", lambda r=rank, w=worker: (r, 2, w, 2))
            seen.append(list(stream._shard_urls()))
    assert all(len(s) == 1 for s in seen)  # 4 shards over 2 ranks x 2 workers
    assert sorted(u for s in seen for u in s) == sorted(stream.cfg.urls)


def test_pipe_urls_stream(small_shards):
    first = sorted((small_shards / "train").glob("*.tar"))[0]
    dm = _dm(small_shards, train_shards=f"pipe:cat {first}")
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 8  # 10 samples in the shard; training drops the last partial batch


def test_species_targets_carry_species_keys_not_tokens(small_shards):
    dm = _dm(small_shards, targets="species")
    batch = next(iter(dm.train_stream()))
    assert "text" not in batch and len(batch["taxon"]) == 4
    moved = dm.on_before_batch_transfer(batch, 0)
    assert "taxon" not in moved and moved["species"] == [
        t.ranks if t.species else None for t in batch["taxon"]
    ]
    assert dm.species_classes() == sorted({t.ranks for t in TAXA})
    with pytest.raises(ValueError, match="targets must be 'captions' or 'species'"):
        _dm(small_shards, targets="labels")


def test_prepare_data_writes_the_synthetic_shards_once(tmp_path):
    generate = {
        "out_dir": str(tmp_path / "syn"),
        "seed": 0,
        "train_per_species": 1,
        "val_per_species": 1,
        "unseen_per_species": 1,
    }
    dm = _dm(
        tmp_path,
        train_shards=f"{tmp_path}/syn/train/shard-*.tar",
        eval_sets={"seen": f"{tmp_path}/syn/val/shard-*.tar"},
        generate=generate,
    )
    dm.prepare_data()
    manifest = tmp_path / "syn" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    dm.prepare_data()  # complete and unchanged: reused, not rewritten
    assert manifest.stat().st_mtime_ns == stamp
    assert next(iter(dm.eval_dataloader("seen")))["image"].shape[1:] == (3, 32, 32)


def test_train_augmentation_is_torchvisions_crop_then_clip_normalisation() -> None:
    """The fast training transform must give exactly what torchvision's chain gives for its crop, and
    draw crops within RandomResizedCrop's bounds, reproducibly under a seed."""
    import torchvision.transforms as T

    from tolclip.core.constants import CLIP_MEAN, CLIP_STD
    from tolclip.data.transforms import train_transform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    aug = train_transform(32, (0.5, 1.0))
    torch.manual_seed(3)
    out = aug(img)
    torch.manual_seed(3)
    box = aug.box(*img.size)
    reference = T.Compose([T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    expected = reference(img.crop(box).resize((32, 32), Image.Resampling.BICUBIC))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    boxes = {aug.box(120, 90) for _ in range(300)}
    assert len(boxes) > 50  # random
    for left, top, right, bottom in boxes:
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 120 and 0 <= top and bottom <= 90
        assert 0.5 * 120 * 90 * 0.97 <= w * h <= 120 * 90
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05 or (w, h) == (90, 90)  # the centre-square fallback
