"""``python -m minibnn.data NAME [--data-dir D] [--cache-dir C]``: fetch/convert a dataset into
the cache and print which copy it came from (kind, path, sha256), its shapes, label counts and
pixel statistics (a quick check of a copy)."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from minibnn.data import DATASET_NAMES, load_dataset
from minibnn.errors import MinibnnError
from minibnn.run.provenance import data_record, format_provenance


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minibnn.data", description=__doc__)
    p.add_argument("name", help=f"one of {', '.join(DATASET_NAMES)}")
    p.add_argument("--data-dir", default=None, help="folder (or CIFAR-10 archive) with raw files")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $MINIBNN_CACHE or "
                                                     "~/.cache/minibnn)")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    a = p.parse_args(argv)
    try:
        ds = load_dataset(a.name, data_dir=a.data_dir, cache_dir=a.cache_dir,
                          download=not a.no_download)
    except MinibnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(ds)
    print(*format_provenance({"data": data_record(ds)}))
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        # undo the standardisation to report the [0, 1] statistics per channel
        x01 = x.astype(np.float64) * np.reshape(ds.std, (1, -1, 1, 1)) \
            + np.reshape(ds.mean, (1, -1, 1, 1))
        mean = x01.mean(axis=(0, 2, 3))
        std = x01.std(axis=(0, 2, 3))
        print(f"{split}: {x.shape[0]} images, labels {int(y.min())}..{int(y.max())}, "
              f"counts {np.bincount(y, minlength=ds.num_classes).tolist()}")
        print(f"  pixel mean {np.round(mean, 6).tolist()} std {np.round(std, 6).tolist()} "
              f"(in [0,1]); standardised mean {x.mean():.4f} std {x.std():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
