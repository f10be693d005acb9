"""Every bound of Dropbear, named in one place (DESIGN.md, "Explicit limits").

A flood from a Byzantine client or node fills one of these bounds and is refused; nothing
grows without limit. Each module imports its limits from here.
"""

# --- consensus core (dropbear._core) ---------------------------------------------------
QUORUM_MAX_SLOTS = 4096
"""(view, seq) slots a QuorumTracker follows at once."""
# Fixed inside the Rust core, listed here for the record: _core.MAX_EVIDENCE (equivocation
# records a tracker holds until taken) and _core.KEY_CACHE_ENTRIES (public keys kept parsed
# for signature checks, 4,096; the cache is emptied when full).

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
INFERENCE_INLINE_MAX_S = 0.001
"""A batch whose bucket ran faster than this when warmed runs on the event loop's thread:
handing it to a worker thread and back costs more than it blocks the loop. A run's time is
the lesser of its wall and CPU time (executor.run_cost), so that waiting for a core on a
loaded machine does not count as the model's."""
INFERENCE_INLINE_SLOW_RUNS = 3
"""In-place runs in a row over twice INFERENCE_INLINE_MAX_S that send a bucket back to
worker threads for good (one slow run may be a hiccup, not the model)."""
INFERENCE_MAX_INPUT_BYTES = 1 << 20
"""Bytes of one model input (224x224x3 float32 is 602,112)."""
INFERENCE_STACK_BYTES = 1 << 20
"""Bytes of request inputs a node copies into one array to check or run them together
(digit inputs: 4,096 of 256 bytes); larger inputs are read in place, one by one."""
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

# --- network (dropbear.net) ---------------------------------------------------------------
NET_MAX_FRAME_BYTES = (32 << 20) + 4096
"""Bytes of one frame's payload: one wire message (MAX_MESSAGE_BYTES) and some room; a
larger length prefix closes the connection."""
NET_PEER_SEND_QUEUE = 1024
"""Frames waiting to be sent to one peer; past it new frames are dropped and counted."""
NET_MAX_CONNECTIONS = 256
"""Inbound connections (nodes and clients) one listener serves at once."""
NET_MAX_CLIENT_CONNECTIONS = 192
"""Of those, the most clients may hold: the rest stay free for the group's nodes."""
NET_MAX_CONNECTIONS_PER_KEY = 8
"""Inbound connections one key (a client or a node) may hold at once."""
NET_MAX_HANDSHAKES = 64
"""Connections still proving their key at once; past it new ones are closed at once."""
NET_HANDSHAKE_TIMEOUT_S = 5.0
"""Seconds a connecting peer has to prove its key."""
NET_FRAME_TIMEOUT_S = 10.0
"""Seconds to receive the rest of a frame once its length arrived, or to send one frame."""
NET_IDLE_TIMEOUT_S = 30.0
"""Seconds a connection may stay silent (heartbeats count) before it is closed."""
NET_HEARTBEAT_INTERVAL_S = 5.0
"""Seconds between heartbeats on an idle connection."""
NET_CONNECT_TIMEOUT_S = 3.0
"""Seconds one connection attempt may take."""
NET_RECONNECT_BACKOFF_MIN_S = 0.05
NET_RECONNECT_BACKOFF_MAX_S = 2.0
"""Reconnect delays double from the minimum up to the maximum (with jitter)."""
NET_SEND_BATCH_FRAMES = 256
NET_SEND_BATCH_BYTES = 1 << 20
"""Queued frames (and bytes) one write to a peer may carry."""

# --- consensus ---------------------------------------------------------------------------
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest wire message decoded at all (a VIEW-CHANGE carrying a window of batches)."""
MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest model input of one REQUEST."""
MAX_INPUT_RANK = 8
"""Most dimensions of a model input's shape."""
MAX_NAME_BYTES = 64
"""Longest dtype, model name or other short text field."""
MAX_ADDRESS_BYTES = 255
"""Longest node address (host:port)."""
MAX_NODES = 64
"""Most nodes in one model group."""
MAX_VOTES_PER_MESSAGE = 1024
"""Most (request digest, label, score) votes in one VOTES message (one inference batch)."""
MAX_BATCH_ENTRIES = 256
"""Most requests ordered in one PRE-PREPARE."""
MAX_BATCH_VOTE_MESSAGES = 4 * MAX_NODES
"""Most VOTES messages a PRE-PREPARE may carry."""
MAX_BATCH_UPDATES = MAX_NODES
"""Most MODEL-UPDATEs in one PRE-PREPARE."""
MAX_LABEL = 2**31 - 1
"""Largest class label a vote may carry."""
MAX_INFLIGHT_PER_CLIENT = 256
"""Requests of one client accepted but not yet ordered (and the width of its replay window:
ids more than this far below its highest ordered one are refused). Enough for one client to
keep a saturated group busy: at 4,000-5,000 certified req/s on loopback a request takes
100-150 ms, so 64 held a client to about 500 req/s; and every client costs the group a signed
REPLY per batch and node, so fewer clients that pipeline deeper cost less per request (see
benches/HISTORY.md, "Twentieth round"). A window is an int of this many bits."""
MAX_CLIENTS = 10_000
"""Clients with requests in flight or a remembered last request id in the replay table."""
MAX_PENDING_REQUESTS = 8192
"""Requests accepted and not yet ordered, over all clients."""
MAX_PENDING_VOTE_MESSAGES = 4096
"""VOTES messages kept for requests not yet ordered."""
MAX_REPLY_CACHE = 4096
"""Executed requests whose certificates a node can make again for a client's
retransmission without its ledger (each a leaf index into its batch's kept leaves,
certificate.KeptBatch)."""
MAX_VERIFIED_CACHE = 16384
"""Digests of messages whose signatures were already checked (skip re-verification)."""
DECODE_MEMO_ENTRIES = 1024
"""Decoded REQUEST headers and VOTES kept by their bytes, so that a PRE-PREPARE repeating
them is not decoded twice (wire.DecodeMemo). A header is wanted from its arrival until the
PRE-PREPARE that orders it, 0.1-0.3 s under load here: 1,024 hold about 0.2 s at 5,000
requests/s, and a miss only costs a decode. Every entry is an object graph that lives until
it is evicted, and a heap churning through many of them runs slower the longer it runs:
16,384 -> 4,096 was x1.041 after 30 s of load (benches/HISTORY.md, "Twentieth round"),
4,096 -> 1,024 x1.052 at closed 512 and x1.034 at closed 768 from 12 keys ("Twenty-first
round"). Taking each header out at its second arrival instead kept VOTES longer, and was
slower (x0.961)."""
DECODE_MEMO_BYTES = 64 * 1024 * 1024
"""Memory DecodeMemo may hold (encodings and decoded objects), whatever their number."""
SEQ_WINDOW = 64
"""Sequence numbers accepted above the last stable checkpoint (PBFT's high watermark)."""
CHECKPOINT_INTERVAL = 16
"""K: a CHECKPOINT every K sequence numbers; the log below a stable one is discarded."""
SNAPSHOT_INTERVAL = 1024
"""Committed batches between two snapshots of the group state in a node's ledger: a
restarted node rebuilds its state from the latest one and replays only the batches after it
(at most this many, not the whole log). A snapshot holds up to MAX_CLIENTS client windows."""
RECOVERY_CHUNK = 256
"""Committed batches a restarting replica reads from its ledger at a time."""
PIPELINE_DEPTH = 16
"""Batches the primary keeps in flight beyond the last executed one."""
VOTE_WAIT = 0.02
"""Seconds the primary waits, past 2f+1 votes, for the remaining nodes' votes."""
EAGER_DEPTH = 1
"""Batches in flight below which the primary proposes whatever is ready at once (1: a
batch goes at once while nothing is in flight; 1 and 32 beat 2 and 16 in interleaved A/B
runs at saturation, at 200 req/s and over three sites, see benches/HISTORY.md)."""
BATCH_FILL = 32
"""Past EAGER_DEPTH batches in flight, a batch of fewer requests (BATCH_FILL more for each
further batch in flight, up to MAX_BATCH_ENTRIES) waits for more..."""
BATCH_WAIT = 0.02
"""...for at most this many seconds (long enough to fill batches when a batch takes a few
wide-area round trips to commit; on loopback, batches fill long before)."""
BATCH_HOLD_MIN = 8
"""No batch waits (neither for BATCH_FILL nor for the prepare phase) while the requests in
flight and its own are fewer than this: at low load waiting gathers next to nothing, and
over three sites a batch paced by its predecessor's prepare phase makes every request wait
a one-way delay more. One BATCH_FILL (32) was too many: digits at 200 req/s on loopback,
at the edge of this machine's CPU, got p50 84 -> 106 ms from the extra batches; with 8,
p50 0.92x (see benches/HISTORY.md, "Tenth round")."""
REQUEST_TIMEOUT = 1.0
"""Seconds a backup waits for an orderable request to commit before it suspects the primary."""
VIEW_CHANGE_TIMEOUT = 1.0
"""Seconds a view change may take before the next view is tried (doubled each time)."""
MAX_VIEW_CHANGE_TIMEOUT = 30.0
"""Cap on the doubled view-change timeout."""
CATCHUP_INTERVAL = 0.5
"""Seconds between catch-up requests while a replica knows it is behind."""
MAX_CATCHUP_BATCHES = 16
"""Committed batches in one catch-up response."""
MAX_FUTURE_MESSAGES = 1024
"""Protocol messages buffered for a sequence number not yet reachable."""
MAX_EVIDENCE_ITEMS = 1024
"""Evidence items a replica holds until the node exports them."""

# --- node (dropbear.node) -----------------------------------------------------------------
NODE_INTAKE_QUEUE = 4096
"""Client requests received and waiting to be handed to the replica in one batch; past it
the node answers REJECT (busy)."""
NODE_INTAKE_BATCH = 256
"""Client requests handed to the replica at once (their signatures are batch-verified)."""
NODE_MAX_INFERENCE_INFLIGHT = 2048
"""Requests between "run inference" and their vote; the executor queue never overflows."""
NODE_MAX_EVIDENCE = 1024
"""Evidence records a node keeps in memory; older ones are dropped (and were logged)."""

# --- client (dropbear.client) -------------------------------------------------------------
CLIENT_REQUEST_TIMEOUT_S = 2.0
"""Seconds a client waits for a certificate before re-sending the request to every node
(a faulty primary is replaced meanwhile by a view change)."""
CLIENT_RETRY_BACKOFF_S = 0.05
"""Seconds before a client asks a node again that refused a request for a full limit..."""
CLIENT_FAST_RETRIES = 4
"""...at most this many times per request; then only the request timeout re-sends it."""
CLIENT_DEADLINE_S = 60.0
"""Seconds a client keeps trying one request before it gives up."""
CLIENT_CONTROL_TIMEOUT_S = 30.0
"""Seconds a client waits for a node's answer to a control frame (status, update)."""
CLIENT_VERIFIED_BATCHES = 1024
"""Committed batches whose commit signatures a client remembers having verified."""
