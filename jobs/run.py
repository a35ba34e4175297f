"""Ray job entrypoint: `llmrec run`.

    ray job submit --working-dir . -- python jobs/run.py --config configs/synthetic.yaml

Parses the arguments, loads the config and calls one library function (via the CLI).
"""

import sys

from llmrec_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
