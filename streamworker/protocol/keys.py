"""Every Redis key, stream, group and channel name, in one place.

Everything one atomic step touches for a model's jobs carries the model's
Redis Cluster hash tag (``{model}``), so a Lua script never crosses slots and
streams shard by model when a deployment moves to Redis Cluster.
"""

from __future__ import annotations

import re
from functools import lru_cache

PREFIX = "sw"
GROUP = "workers"

_TAG_UNSAFE = re.compile(r"[{}]")


def tag(model: str) -> str:
    """The hash tag for a model: braces are not allowed inside a tag."""
    return "{" + _TAG_UNSAFE.sub("_", model) + "}"


class ModelKeys:
    """Key names for one model's queue; all share the model's hash tag."""

    __slots__ = ("dead", "model", "queued", "stream", "t", "wake", "weights")

    def __init__(self, model: str) -> None:
        self.model = model
        self.t = f"{PREFIX}:{tag(model)}"
        # The job stream: one entry per accepted job, XACKed and XDELed when done,
        # so its length is the number of jobs queued or running.
        self.stream = f"{self.t}:jobs"
        # Dead letters: jobs that failed JOB_MAX_ATTEMPTS times, with the reason.
        self.dead = f"{self.t}:dead"
        # Counter of job records in status `queued` (the O(1) backpressure check).
        self.queued = f"{self.t}:queued"
        # Scheduling (docs/architecture.md, "Scheduling"): a queued job waits in
        # wait(tier, owner) until a worker's dispatch moves it into `stream`.
        # A list of tokens an idle worker blocks on (BLPOP): one per enqueue.
        self.wake = f"{self.t}:wake"
        # owner -> fair-share weight (the keys file's `weight`), kept by enqueue.
        self.weights = f"{self.t}:weights"

    def wait(self, tier: str, owner: str) -> str:
        """The jobs of one (tier, owner) not yet dispatched (a stream, oldest first)."""
        return f"{self.t}:wait:{tier}:{owner}"

    def ring(self, tier: str) -> str:
        """The tier's owners with waiting jobs, in round-robin order (a list)."""
        return f"{self.t}:ring:{tier}"

    def deficit(self, tier: str) -> str:
        """owner -> deficit-round-robin credit in jobs (a hash)."""
        return f"{self.t}:deficit:{tier}"

    def age(self, tier: str) -> str:
        """job id -> enqueue time (ms) of the tier's waiting jobs (a sorted set):
        its head is the oldest, which aging compares across tiers."""
        return f"{self.t}:age:{tier}"

    def job(self, job_id: str) -> str:
        """The job record (a hash): status, attempt, timestamps, result."""
        return f"{self.t}:job:{job_id}"

    def log(self, job_id: str) -> str:
        """The job's token log (a list): entry i is token event seq i."""
        return f"{self.t}:log:{job_id}"

    def channel(self, job_id: str) -> str:
        """The job's pub/sub channel: token and status events, at-most-once."""
        return f"{self.t}:ch:{job_id}"

    def lifecycle(self, job_id: str) -> list[str]:
        """KEYS of the scripts that move a job along (start, finish, requeue),
        in the order they take them: record, log, channel, stream, queued, dead."""
        return [
            self.job(job_id),
            self.log(job_id),
            self.channel(job_id),
            self.stream,
            self.queued,
            self.dead,
        ]

    def idempotency(self, owner: str, key: str) -> str:
        """(owner, Idempotency-Key) -> job id, so a retried POST returns the same
        job. Scoped by owner: another API key's equal header is another job."""
        return f"{self.t}:idem:{owner}:{key}"


@lru_cache(maxsize=1024)
def model_keys(model: str) -> ModelKeys:
    """The keys of a model's queue (cached: built on every request)."""
    return ModelKeys(model)


def job_model(job_id: str) -> str:
    """job id -> model name, so /v1/jobs/{id} finds the model's keys."""
    return f"{PREFIX}:jobmodel:{job_id}"


def worker(worker_id: str) -> str:
    """A live worker's heartbeat (a hash with a TTL)."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_name(name: str) -> str:
    """The lease on a worker name (a string with a TTL): which live process
    uses the name, as JSON (host, boot id, pid namespace, pid, process start
    time; streamworker/instance.py). Keyed by the name itself, not by host and
    instance number, because the name is what must be unique: it is the
    consumer in every model's group, the registry id and the GPU semaphore's
    owner, and a pinned WORKER_NAME, a WORKER_INSTANCE and an automatically
    chosen number can all arrive at the same name."""
    return f"{PREFIX}:name:{name}"


WORKERS = f"{PREFIX}:workers"  # sorted set: worker id -> last heartbeat (ms)
MODELS = f"{PREFIX}:models"  # set of model names that ever had a stream


def semaphore(gpu: str) -> str:
    """The GPU semaphore (a sorted set of holders scored by lease expiry)."""
    return f"{PREFIX}:gpu:{gpu}:slots"


def ratelimit(key_name: str, kind: str) -> str:
    """Per API key sliding-window counters for requests and tokens."""
    return f"{PREFIX}:rl:{{{key_name}}}:{kind}"
