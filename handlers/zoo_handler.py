"""TorchServe handler for zoo entries, where TorchServe users look for it. A thin subclass of the one inside the
package (`zoo.handlers.zoo_handler.ZooHandler`, what `zoo archive` packs): all the work is done there.

    torch-model-archiver --model-name hp1-encode --version 1.0 --handler handlers/zoo_handler.py \
        --extra-files PAYLOAD --export-path STORE

PAYLOAD is a folder with the entry's files (config.json, model.safetensors, README.md) and `zoo_serve.json`,
e.g. {"op": "encode"} (or "decode"; optional: "backend", "max_pixels", "threads", and "level" for a
variable-rate entry). The TorchServe workers need the `zoo-codecs` package installed. `zoo archive` builds both
archives of an entry in one command (README, "Serving").
"""

from zoo.handlers.zoo_handler import ZooHandler as _PackageHandler


class ZooHandler(_PackageHandler):
    """TorchServe finds the one class defined in a handler module; this one adds nothing to the package's."""
