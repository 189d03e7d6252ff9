"""What a folder, checkpoint or LoRA file is (`fewstep info`), without loading it: `describe(path_or_id)`
gives a JSON-serialisable dict, `format_info(description)` the text the command prints.

One concern per module: weights.py (safetensors headers of a component folder), families.py (model
families from configs), folders.py (pipeline and model folders), lora.py (LoRA files), targets.py (the
modules a LoRA may change in a model folder, for `base=`), files.py (checkpoints, IP-Adapters, telling
file kinds apart), describe.py (the dispatch), text.py (the text). NumPy and the standard library only:
no framework is imported and no tensor data is read beyond a LoRA's alpha scalars (and its factors for
`base=`)."""

from fewstep.info.describe import EXPECTED, describe
from fewstep.info.text import format_info

__all__ = ["EXPECTED", "describe", "format_info"]
