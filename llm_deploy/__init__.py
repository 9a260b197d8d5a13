"""llm_deploy: compile Llama-family models with a shape-aware IR and serve them."""

__version__ = "0.1.0"
