"""Build ``eqkern/_data/mnist_subset.npz``, the small MNIST subset shipped inside the package.

Run once from the repository root (the output is committed)::

    python scripts/make_embedded_mnist.py [path/to/mnist.npz]   # default: $EQKERN_DATA/mnist.npz

Where the data came from
------------------------
The source is a full MNIST ``mnist.npz`` (60000 train / 10000 test; keys ``x_train``, ``y_train``,
``x_test``, ``y_test``, ``class_names``), given as the argument or found in the data folder
``$EQKERN_DATA``. The file the committed subset was built from is **bit-exact** MNIST:

- Dataset: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits";
  Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE 86(11), 1998.
- That file was rebuilt from the PNGs in the public GitHub repository ``rasbt/mnist-pngs``
  (commit ``d26bd33bf1e454dd15bd4fe8b8ba64c76308f91c``), each image put back at its position in
  the original idx files, so the original MNIST order is kept. Re-serialised as idx files its
  arrays give the published MD5s of the original files (train-images
  ``6bbc9ace898e44ae57da46a324031adb``, t10k-images ``2646ac647ad5339dbf082846283269ea``);
  test images and labels were also cross-checked against the idx files in ``anax32/data``
  (commit ``c7634e4b6122b2227c50a71ba962d63fe2856c16``).

Selection rule
--------------
For every class c = 0..9 take the first 1000 training images of class c and the first 200 test
images of class c, in their original order within the class. Interleave them round-robin
(image 0 of classes 0..9, then image 1 of classes 0..9, ...), so every prefix of length 10*k is
exactly balanced. Output: 10000 train / 2000 test, same keys, dtypes and layout as the source
(``x_*`` uint8 (N, 28, 28), ``y_*`` uint8 (N,), ``class_names`` unicode), plus
``train_source_index`` / ``test_source_index`` (int32, each image's position in the source file)
and ``source`` (unicode lines describing provenance). No object arrays.

The zip members get a fixed timestamp so that rebuilding gives a byte-identical file (plain
``np.savez_compressed`` stamps the current time into the zip headers).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "eqkern" / "_data" / "mnist_subset.npz"
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
# Known sha256 of the bit-exact mnist.npz the subset was built from; a mismatch is only warned about, because a
# different but equivalent copy (e.g. re-zipped) would still give the same arrays.
EXPECTED_SHA256 = "20be2b5e9c6d6d83ede1b3f854b23a28cd4ae46a7c2437e731ec828ebc642234"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def round_robin_indices(y: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Indices into ``y`` (N,): first ``per_class`` of each class, interleaved class by class.

    Returns (num_classes * per_class,) int64: [c0_0, c1_0, ..., c9_0, c0_1, c1_1, ...].
    """
    per = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)  # ascending, i.e. original order within the class
        if idx.size < per_class:
            raise ValueError(f"class {c} has only {idx.size} images, need {per_class}")
        per.append(idx[:per_class])
    # (C, K) -> transpose -> (K, C) -> flatten gives the round-robin order.
    return np.stack(per).T.reshape(-1)


def deterministic_savez_compressed(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed``, then rewrite the zip with fixed member timestamps."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    buf.seek(0)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, src.read(info.filename))
    tmp.replace(path)


def build(source: Path, output: Path) -> None:
    digest = sha256_of(source)
    if digest != EXPECTED_SHA256:
        print(f"warning: {source} sha256 {digest} differs from the documented {EXPECTED_SHA256}")
    with np.load(source, allow_pickle=False) as d:
        src = {k: d[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}
    num_classes = len(src["class_names"])
    tr = round_robin_indices(src["y_train"], TRAIN_PER_CLASS, num_classes)
    te = round_robin_indices(src["y_test"], TEST_PER_CLASS, num_classes)

    source_lines = np.array([
        "eqkern embedded MNIST subset (mnist_subset.npz)",
        f"source file: {source.name} sha256 {digest}",
        "source data: full bit-exact MNIST, rebuilt from PNGs in GitHub rasbt/mnist-pngs "
        "commit d26bd33bf1e454dd15bd4fe8b8ba64c76308f91c, original MNIST order kept",
        "citation: Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, Gradient-based learning applied "
        "to document recognition, Proc. IEEE 86(11), 1998; Y. LeCun, C. Cortes, C. J. C. "
        "Burges, The MNIST database of handwritten digits",
        f"rule: for each class c=0..{num_classes - 1} the first {TRAIN_PER_CLASS} training and "
        f"first {TEST_PER_CLASS} test images of class c in original order, interleaved "
        "round-robin (image k of classes 0..9, then image k+1, ...); every prefix of 10*k "
        "images is class-balanced",
        "train_source_index/test_source_index: position of each image in the source file",
        "built by scripts/make_embedded_mnist.py",
    ])
    output.parent.mkdir(parents=True, exist_ok=True)
    deterministic_savez_compressed(
        output,
        x_train=src["x_train"][tr], y_train=src["y_train"][tr],
        x_test=src["x_test"][te], y_test=src["y_test"][te],
        class_names=src["class_names"],
        train_source_index=tr.astype(np.int32), test_source_index=te.astype(np.int32),
        source=source_lines,
    )
    print(f"wrote {output}: {output.stat().st_size} bytes, sha256 {sha256_of(output)}")
    print(f"train {len(tr)} ({TRAIN_PER_CLASS}/class), test {len(te)} ({TEST_PER_CLASS}/class)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", type=Path, default=None,
                   help="full MNIST npz (default: mnist.npz in the folder $EQKERN_DATA)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args()
    source = args.source
    if source is None:
        data = os.environ.get("EQKERN_DATA")
        if not data:
            p.error("no source given and EQKERN_DATA is unset: pass the path of a full MNIST "
                    "mnist.npz, or set EQKERN_DATA to the folder that holds it")
        source = Path(data) / "mnist.npz"
    if not source.is_file():
        p.error(f"{source} is not a file: pass the path of a full MNIST mnist.npz")
    build(source.resolve(), args.output)


if __name__ == "__main__":
    main()
