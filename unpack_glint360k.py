#!/usr/bin/env python
"""Unpack Glint360K-style train.rec/train.idx folders into one folder per identity (raw image bytes).

    python unpack_glint360k.py --include /data/glint360k,/data/faces_emore --output /data/unpacked
    python unpack_glint360k.py --include /data/glint360k --md5 glint360k     # only check the published sums

The same command as `partial-fc unpack` (src/partial_fc/data/unpack.py), run through the same command line;
requires the project to be installed (scripts/install.sh).
"""
import sys

from partial_fc import cli

if __name__ == "__main__":
    sys.exit(cli.main(["unpack", *sys.argv[1:]]))
