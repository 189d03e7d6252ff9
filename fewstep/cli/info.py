"""`fewstep info PATH_OR_ID`: what a pipeline or model folder, a single-file checkpoint or a LoRA file is
(fewstep.info reads headers and configs only: no framework, no weights loaded)."""

from __future__ import annotations

import json
from typing import Iterable


def add_parser(sub) -> None:
    info = sub.add_parser("info", help="what a folder, checkpoint or LoRA file is: family, components, dtypes; "
                                       "a LoRA's format, rank, alpha and the base it fits")
    info.add_argument("path_or_id", metavar="PATH_OR_ID", help="a folder, a .safetensors file or a hub id")
    info.add_argument("--weight-name", metavar="FILE", help="the file to describe in a folder or repository holding several")
    info.add_argument("--base", metavar="FOLDER", help="for a LoRA: a pipeline folder (or hub id) to check it against")
    info.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args, given: Iterable[str] = ()) -> int:
    from fewstep.info import describe, format_info

    description = describe(args.path_or_id, weight_name=args.weight_name, base=args.base)
    print(json.dumps(description, indent=2) if args.json else format_info(description))
    return 0
