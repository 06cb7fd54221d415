"""The image world: determinism, labels that agree with pixels, digits, user folders and clips."""

import json

import numpy as np
import pytest
import torch

from genforge.errors import DataError
from genforge.world.images import (
    ATTRIBUTES,
    COLOURS,
    POSITIONS,
    load_digits_set,
    load_image_folder,
    make_clips,
    make_shapes,
    save_grid,
)


def test_shapes_are_seeded():
    a, b, c = make_shapes(50, seed=3), make_shapes(50, seed=3), make_shapes(50, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (50, 3, 16, 16) and a.images.dtype == torch.float32
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0


def test_labels_agree_with_pixels():
    s = make_shapes(300, seed=0)
    for i in range(len(s)):
        img = s.images[i].numpy()
        lab = {k: ATTRIBUTES[k][int(v[i])] for k, v in s.labels.items()}
        assert s.captions[i].startswith(f"a {lab['size']} {lab['colour']} {lab['shape']} in the")
        mask = img.sum(0) > 0
        # colour: every lit pixel has exactly the labelled colour
        assert np.allclose(img[:, mask].T, np.array(COLOURS[lab["colour"]], dtype=np.float32))
        # position: the lit pixels' centroid is within 2 px of the labelled centre (the triangle's centroid sits low)
        rr, cc = np.nonzero(mask)
        r0, c0 = POSITIONS[lab["position"]]
        assert abs(cc.mean() - c0) <= 1.6 and abs(rr.mean() - r0) <= 2.6, (i, lab)
        # size and shape: fill of the bounding box (square ~1, circle ~0.75, triangle ~0.5) and area
        box = (rr.max() - rr.min() + 1) * (cc.max() - cc.min() + 1)
        fill = mask.sum() / box
        want = {"square": (0.95, 1.01), "circle": (0.6, 0.9), "triangle": (0.35, 0.62)}[lab["shape"]]
        assert want[0] <= fill <= want[1], (i, lab, fill)
        extent = max(rr.max() - rr.min() + 1, cc.max() - cc.min() + 1)
        assert (extent >= 8) == (lab["size"] == "large") and extent >= 4, (i, lab, extent)


def test_digits_split_is_disjoint_and_seeded():
    tr, te = load_digits_set("train", seed=0), load_digits_set("test", seed=0)
    assert tr.images.shape[1:] == (1, 8, 8) and len(tr) + len(te) == 1797
    assert 0.0 <= tr.images.min() and tr.images.max() <= 1.0
    flat_tr = {tuple(x) for x in tr.images.flatten(1).tolist()}
    overlap = sum(tuple(x) in flat_tr for x in te.images.flatten(1).tolist())
    assert overlap <= 3  # a few digits are pixel-identical in the source data; the split itself is disjoint by index
    assert torch.equal(load_digits_set("test", seed=0).images, te.images)
    with pytest.raises(DataError, match="split"):
        load_digits_set("dev")


def test_image_folder_mixed_corrupt_and_captions(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 128).save(tmp_path / "b.png")
    Image.new("RGBA", (16, 16), (0, 255, 0, 255)).save(tmp_path / "c.png")
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "notes.txt").write_text("ignored")
    s = load_image_folder(tmp_path, size=16)
    assert s.images.shape == (3, 3, 16, 16)
    assert [name for name, _ in s.skipped] == ["d.png"]
    assert torch.allclose(s.images[0, 0], torch.ones(16, 16)) and s.images[0, 1].abs().max() == 0
    assert torch.allclose(s.images[1], torch.full((3, 16, 16), 128 / 255))
    grey = load_image_folder(tmp_path, size=8, mode="L")
    assert grey.images.shape == (3, 1, 8, 8)

    caps = tmp_path / "captions.jsonl"
    rows = [{"file": n, "caption": f"picture {n}"} for n in ("a.png", "b.png", "c.png")]
    caps.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_image_folder(tmp_path, captions=caps).captions == ["picture a.png", "picture b.png", "picture c.png"]
    caps.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    with pytest.raises(DataError, match="no caption for 1 image.*c.png"):
        load_image_folder(tmp_path, captions=caps)
    caps.write_text("\n".join(json.dumps(r) for r in rows + [{"file": "zz.png", "caption": "x"}]) + "\n")
    with pytest.raises(DataError, match=r"captions.jsonl:4: caption for 'zz.png'"):
        load_image_folder(tmp_path, captions=caps)


def test_image_folder_empty_and_all_corrupt(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 image files could be read"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(tmp_path / "missing")


def test_clips_move_consistently():
    clips, caps, lab = make_clips(20, seed=1)
    assert clips.shape == (20, 8, 3, 16, 16)
    assert torch.equal(make_clips(20, seed=1)[0], clips)
    for i in range(20):
        for t in range(8):
            mask = clips[i, t].sum(0) > 0
            rr, cc = torch.nonzero(mask, as_tuple=True)
            assert abs(cc.float().mean() - lab["cols"][i, t]) < 1.0
        step = (lab["cols"][i, 1:] - lab["cols"][i, :-1]).abs()
        assert torch.all(step <= 1.0 + 1e-9)
        assert "moving" in caps[i]


def test_save_grid(tmp_path):
    from PIL import Image

    s = make_shapes(10, seed=0)
    p = save_grid(s.images, tmp_path / "grid.png", nrow=5, scale=2)
    w, h = Image.open(p).size
    assert (w, h) == ((5 * 17 + 1) * 2, (2 * 17 + 1) * 2)
