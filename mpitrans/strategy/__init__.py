"""MindSpore parallel strategy files: what every parameter's layout is, read into `StrategyFile`.

One entry point, `load(path_or_dir)`: a protobuf or JSON file (MindSpore's name rule), or a directory of
per-stage files merged in memory; the result is checked against arithmetic bounds before anything is
allocated from it. `to_bytes`/`from_bytes` carry a loaded strategy between processes; `load_payload`/`load_from_payload`
split `load` so one process reads the file and every process parses it. Modules:

* `model`: the raw layouts as stored, and their normalized per-parameter form;
* `codec`: protobuf and JSON reading and writing (via `storage.wire`);
* `merge`: per-stage files into one (`merge_pipeline_strategys`);
* `layout_map`: the per-parameter layouts MindSpore derives from a file;
* `bounds`: the arithmetic limits an acceptable strategy stays within.
"""

from mpitrans.strategy.codec import strategy_from_bytes as from_bytes
from mpitrans.strategy.codec import strategy_to_bytes as to_bytes
from mpitrans.strategy.merge import load_from_payload, load_payload
from mpitrans.strategy.merge import load_strategy as load
from mpitrans.strategy.model import StrategyFile

__all__ = ["StrategyFile", "from_bytes", "load", "load_from_payload", "load_payload", "to_bytes"]
