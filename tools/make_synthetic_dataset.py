#!/usr/bin/env python3
"""Write the procedural stem dataset (MUSDB18-HQ layout) used for tests and smoke training.

Example: ``python tools/make_synthetic_dataset.py /tmp/synth --train 8 --valid 2 --test 2``
writes ``/tmp/synth/{train,valid,test}/<split>-NNN/{mixture,drums,bass,other,vocals}.wav``;
``--sources drums,bass,other,vocals,piano`` adds a fifth instrument (the same four stems, plus
piano in the mixture).
"""

from __future__ import annotations

import argparse
import sys
import time

from demucs_rr import argtypes
from demucs_rr.data.synthetic import SYNTHETIC_SOURCES, make_synthetic_dataset
from demucs_rr.errors import DemucsRRError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder")
    count = argtypes.non_negative_int
    parser.add_argument("--train", type=count, default=8, help="train tracks (default 8)")
    parser.add_argument("--valid", type=count, default=2, help="valid tracks (default 2)")
    parser.add_argument("--test", type=count, default=2, help="test tracks (default 2)")
    parser.add_argument(
        "--seconds", type=argtypes.seconds, default=8.0, help="track length (default 8)"
    )
    parser.add_argument("--samplerate", type=int, default=44100, help="sample rate (default 44100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--sources",
        default="drums,bass,other,vocals",
        help=f"comma-separated stems among {','.join(SYNTHETIC_SOURCES)} (default the 4 MUSDB "
        "stems)",
    )
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    try:
        root = make_synthetic_dataset(
            args.root,
            {"train": args.train, "valid": args.valid, "test": args.test},
            seconds=args.seconds,
            samplerate=args.samplerate,
            seed=args.seed,
            sources=[name.strip() for name in args.sources.split(",") if name.strip()],
        )
    except DemucsRRError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = args.train + args.valid + args.test
    print(f"wrote {total} tracks to {root} in {time.perf_counter() - begin:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
