"""llmrec-ray: LLM-token features for recommender systems on Ray and Feast.

Stages (one module each): datasets -> serialize -> encode (+ pooling) -> featurestore -> train ->
evaluate -> recommend; `pipeline` chains them and `cli` exposes them as `llmrec` subcommands.
"""

__version__ = "0.1.0"
