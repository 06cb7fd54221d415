"""The image world: seeded, download-free pictures for the image lessons.

Three sources, one container (`ImageSet`):
- `make_shapes(n, seed)`: 16x16 RGB pictures of a circle, square or triangle with a colour, a size and a
  position, each with a caption ("a small red circle in the top left") and integer attribute labels. The
  pictures are drawn from the labels by exact masks, so labels and pixels always agree.
- `load_digits_set(split, seed)`: scikit-learn's bundled 8x8 digits (1,797 images, no download).
- `load_image_folder(path)`: a user's folder of PNG/JPEG files, resized to one size and mode; unreadable files
  are counted and skipped, an empty folder or a caption file that does not match is a one-line `DataError`.
And `make_clips(n, seed)`: 8-frame clips of one shape moving in a straight line and bouncing off the walls.

Pixels are float32 in [0, 1], shaped (N, C, H, W) (clips: (N, T, C, H, W)); models rescale to [-1, 1] themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge.errors import DataError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1)}
SIZES = {"small": 2.5, "large": 4.5}  # half-extent in pixels (radius of the circle, half side of the square)
# Position name -> centre (row, col) on a 16x16 canvas, scaled for other sizes.
POSITIONS = {
    "top left": (4.0, 4.0),
    "top right": (4.0, 11.0),
    "bottom left": (11.0, 4.0),
    "bottom right": (11.0, 11.0),
    "center": (7.0, 7.0),  # integer centres keep the shapes symmetric on the pixel grid
}
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSet:
    """Images with optional captions and integer attribute labels.

    images: (N, C, H, W) float32 in [0, 1]; labels: attribute name -> (N,) int64; captions: N strings or empty;
    skipped: (file, reason) for inputs that could not be read (only for folders).
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    captions: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx: torch.Tensor | list[int]) -> ImageSet:
        """The rows `idx` (labels and captions follow)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        caps = [self.captions[i] for i in idx.tolist()] if self.captions else []
        return ImageSet(self.images[idx], {k: v[idx] for k, v in self.labels.items()}, caps)


def caption_of(shape: str, colour: str, size: str, position: str) -> str:
    """The caption the world writes for one picture: 'a small red circle in the top left'."""
    where = "in the center" if position == "center" else f"in the {position}"
    return f"a {size} {colour} {shape} {where}"


def shape_mask(shape: str, centre: tuple[float, float], half: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape; pixel (r, c) is inside when its centre (r+.5, c+.5) is."""
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    r0, c0 = centre[0] + 0.5, centre[1] + 0.5
    if shape == "circle":
        return (rr - r0) ** 2 + (cc - c0) ** 2 <= half**2
    if shape == "square":
        return (np.abs(rr - r0) <= half) & (np.abs(cc - c0) <= half)
    if shape == "triangle":
        # Upright isosceles triangle in the square's box: apex at the top, base at the bottom.
        top, bottom = r0 - half, r0 + half
        frac = (rr - top) / (2 * half)  # 0 at the apex, 1 at the base
        return (rr >= top) & (rr <= bottom) & (np.abs(cc - c0) <= half * frac)
    raise DataError(f"shape_mask: unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def render(shape: str, colour: str, size_name: str, centre: tuple[float, float], size: int = 16) -> np.ndarray:
    """One (3, size, size) float32 picture: the shape in its colour on a black background."""
    mask = shape_mask(shape, centre, SIZES[size_name] * size / 16, size)
    img = np.zeros((3, size, size), dtype=np.float32)
    for ch, v in enumerate(COLOURS[colour]):
        img[ch][mask] = v
    return img


def make_shapes(n: int, seed: int = 0, size: int = 16, jitter: int = 1) -> ImageSet:
    """`n` seeded pictures of shapes with captions and labels (shape, colour, size, position).

    Small shapes are moved by up to `jitter` pixels so that the set is not just 120 distinct pictures; large ones
    would touch the border, so they stay put.
    """
    rng = np.random.default_rng(seed)
    scale = size / 16
    imgs = np.zeros((n, 3, size, size), dtype=np.float32)
    labels = {k: np.zeros(n, dtype=np.int64) for k in ATTRIBUTES}
    captions = []
    for i in range(n):
        choice = {k: int(rng.integers(len(v))) for k, v in ATTRIBUTES.items()}
        names = {k: ATTRIBUTES[k][j] for k, j in choice.items()}
        r, c = POSITIONS[names["position"]]
        dr, dc = rng.integers(-jitter, jitter + 1, size=2) if names["size"] == "small" else (0, 0)
        imgs[i] = render(names["shape"], names["colour"], names["size"], (r * scale + dr, c * scale + dc), size)
        for k, j in choice.items():
            labels[k][i] = j
        captions.append(caption_of(names["shape"], names["colour"], names["size"], names["position"]))
    return ImageSet(torch.from_numpy(imgs), {k: torch.from_numpy(v) for k, v in labels.items()}, captions)


def load_digits_set(split: str = "all", seed: int = 0, test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) in [0, 1] with labels {'digit'}; split 'train', 'test' or 'all'.

    The split is a seeded permutation, so train and test never share an image.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("load_digits_set needs scikit-learn: pip install 'genforge[image]'") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8); values were 0..16
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    if split == "all":
        idx = perm
    elif split == "test":
        idx = perm[:n_test]
    elif split == "train":
        idx = perm[n_test:]
    else:
        raise DataError(f"load_digits_set: split={split!r}; use 'train', 'test' or 'all'")
    return ImageSet(x[idx], {"digit": y[idx]}, [str(int(v)) for v in y[idx]])


def load_image_folder(path: str | Path, size: int = 16, mode: str = "RGB", captions: str | Path | None = None
                      ) -> ImageSet:
    """Every image file in `path` (sorted by name), converted to `mode` ('RGB' or 'L') and resized to size x size.

    Files that PIL cannot decode are skipped and listed in `.skipped` with the reason; non-image suffixes are
    ignored. `captions` is an optional JSONL file of {"file": name, "caption": text}: a caption for a missing
    image, or an image without a caption, is a `DataError` naming the line or the file.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("load_image_folder needs Pillow: pip install 'genforge[image]'") from None
    if mode not in ("RGB", "L"):
        raise DataError(f"load_image_folder: mode={mode!r}; use 'RGB' or 'L'")
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}); add PNGs or pick another folder")
    arrays, kept, skipped = [], [], []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()  # decode now: a truncated file fails here, not later
                # Palette images resolve their colours through RGBA; the alpha channel itself is dropped.
                im = im.convert("RGBA").convert(mode) if im.mode in ("P", "LA", "RGBA") else im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as e:
            skipped.append((p.name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"))
            continue
        arrays.append(a[None] if mode == "L" else a.transpose(2, 0, 1))  # (C, H, W)
        kept.append(p.name)
    if not arrays:
        raise DataError(f"{folder}: none of the {len(files)} image files could be read (first: {skipped[0][0]}: "
                        f"{skipped[0][1]})")
    caps: list[str] = []
    if captions is not None:
        caps = _match_captions(Path(captions), kept, {name for name, _ in skipped})
    return ImageSet(torch.from_numpy(np.stack(arrays)), {}, caps, skipped)


def _match_captions(path: Path, kept: list[str], skipped: set[str]) -> list[str]:
    """Captions for `kept` images in order, from a JSONL file; mismatches are one-line `DataError`s."""
    from genforge.io import read_jsonl

    by_file: dict[str, str] = {}
    for lineno, row in read_jsonl(path, required=("file", "caption")):
        name = str(row["file"])
        if name not in kept and name not in skipped:
            raise DataError(f"{path}:{lineno}: caption for {name!r}, which is not an image in the folder")
        if name in by_file:
            raise DataError(f"{path}:{lineno}: second caption for {name!r}; keep one line per image")
        by_file[name] = str(row["caption"])
    missing = [n for n in kept if n not in by_file]
    if missing:
        raise DataError(f"{path}: no caption for {len(missing)} image(s), first {missing[0]!r}; add a line "
                        f'{{"file": "{missing[0]}", "caption": "..."}}')
    return [by_file[n] for n in kept]


def make_clips(n: int, seed: int = 0, frames: int = 8, size: int = 16) -> tuple[torch.Tensor, list[str],
                                                                                  dict[str, torch.Tensor]]:
    """`n` clips (N, T, 3, size, size) of one small shape moving at a constant velocity, bouncing off walls.

    Returns (clips, captions like 'a red square moving right', labels {shape, colour, dx, dy, row0, col0} with the
    per-frame centres in labels['rows'] / labels['cols'] of shape (N, T)) so that temporal consistency is checkable.
    """
    rng = np.random.default_rng(seed)
    half = SIZES["small"] * size / 16
    lo, hi = half, size - 1 - half
    clips = np.zeros((n, frames, 3, size, size), dtype=np.float32)
    lab = {k: np.zeros(n, dtype=np.int64) for k in ("shape", "colour", "dx", "dy")}
    rows, cols = np.zeros((n, frames)), np.zeros((n, frames))
    captions = []
    for i in range(n):
        shape, colour = SHAPES[rng.integers(3)], tuple(COLOURS)[rng.integers(len(COLOURS))]
        dr, dc = [int(v) for v in rng.choice([-1, 0, 1], size=2)]
        if dr == 0 and dc == 0:
            dc = 1
        r, c = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        for t in range(frames):
            clips[i, t] = render(shape, colour, "small", (r, c), size)
            rows[i, t], cols[i, t] = r, c
            if not lo <= r + dr <= hi:
                dr = -dr  # bounce
            if not lo <= c + dc <= hi:
                dc = -dc
            r, c = r + dr, c + dc
        lab["shape"][i], lab["colour"][i] = SHAPES.index(shape), tuple(COLOURS).index(colour)
        lab["dx"][i], lab["dy"][i] = dc, dr
        horiz = {1: "right", -1: "left", 0: ""}[lab["dx"][i]]
        vert = {1: "down", -1: "up", 0: ""}[lab["dy"][i]]
        captions.append(f"a {colour} {shape} moving {' and '.join(w for w in (vert, horiz) if w)}")
    labels = {k: torch.from_numpy(v) for k, v in lab.items()}
    labels["rows"], labels["cols"] = torch.from_numpy(rows), torch.from_numpy(cols)
    return torch.from_numpy(clips), captions, labels


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 4) -> Path:
    """Write (N, C, H, W) images in [0, 1] as one PNG grid (atomically), each pixel `scale` x `scale`."""
    from PIL import Image

    from genforge.io import atomic_path

    x = images.detach().float().clamp(0, 1).cpu()
    n, ch, h, w = x.shape
    if ch == 1:
        x = x.expand(n, 3, h, w)
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = torch.ones(3, nrows * (h + 1) + 1, ncol * (w + 1) + 1) * 0.5  # grey 1-pixel gutters
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    arr = arr.repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
