"""Every bound of Dropbear, named in one place (DESIGN.md, "Explicit limits").

A flood from a Byzantine client or node fills one of these bounds and is refused; nothing
grows without limit. Each module imports its limits from here.
"""

# --- consensus core (dropbear._core) ---------------------------------------------------
QUORUM_MAX_SLOTS = 4096
"""(view, seq) slots a QuorumTracker follows at once."""

# --- inference ----------------------------------------------------------------------------
INFERENCE_MAX_BATCH_SIZE = 128
"""Largest batch bucket an executor may compile (buckets are 1, 2, 4, ..., max)."""
INFERENCE_DEFAULT_MAX_BATCH_SIZE = 32
"""Largest bucket an executor compiles when its caller does not say."""
INFERENCE_DEFAULT_MAX_QUEUE_DELAY_S = 0.005
"""How long the batcher holds a first queued input waiting for more to fill a batch."""
INFERENCE_MAX_QUEUE_DELAY_S = 1.0
"""Longest queue delay an executor accepts."""
INFERENCE_MAX_QUEUE_LENGTH = 4096
"""Inputs waiting for a batch; past it ``submit`` is refused (QueueFull)."""
INFERENCE_MAX_INPUT_BYTES = 1 << 20
"""Bytes of one model input (224x224x3 float32 is 602,112)."""
INFERENCE_MAX_TOP_K = 10
"""Most labels a prediction lists besides the top-1."""
INFERENCE_MAX_PARAMETER_BYTES = 1 << 30
"""Bytes of one canonical parameter file (ResNet-50 is about 102 MB)."""
INFERENCE_MAX_TENSORS = 4096
"""Tensors in one canonical parameter file."""
INFERENCE_MAX_TENSOR_NAME_BYTES = 256
"""UTF-8 bytes of one tensor name in a parameter file."""
INFERENCE_MAX_TENSOR_RANK = 8
"""Dimensions of one tensor in a parameter file."""
INFERENCE_MAX_CONFIG_BYTES = 64 * 1024
"""Bytes of one models/<name>/config.toml."""
INFERENCE_MAX_STAGED_VERSIONS = 2
"""Versions an executor holds warm beside the current one, waiting for a switch."""
