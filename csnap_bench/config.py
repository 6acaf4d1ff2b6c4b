"""Sizes and durations of one benchmark run (``--quick`` or the default), with overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The stages, in the order they run; ``--only`` picks some of them.
STAGES = ("cost", "4k", "64k", "snapcount", "qemu", "nbd", "scale")


@dataclass
class Config:
    """Everything a run's stages need to know about sizes and durations."""

    mode: str
    seconds: float  # duration of one measured point of the throughput workloads
    clients: list[int]
    batches: list[int]  # chunks per message
    snap_counts: list[int]
    scale_exceptions: int
    delete_exceptions: int
    small_exceptions: int
    cache_size: str
    baseline_seconds: float
    qemu_writes: int
    lib_seconds: float
    cost_seconds: float  # duration of one point of the per-query cost comparison
    cost_reps: int  # csnapd / ideal pairs per cost point (the median is reported)
    cost_unique_chunks: int  # chunks copied out before the metadata-only cost workloads
    nbd_bytes: int  # size of the NBD comparison's volumes
    nbd_seconds: int  # fio time-based jobs (rewrites), whole seconds
    skip: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready copy."""
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.__dict__.items()}


def quick() -> Config:
    """The smoke run (CI): every stage, tiny sizes, short points."""
    return Config("quick", 0.2, [1, 16], [1], [1, 16], 20_000, 10_000, 10_000, "64M", 0.2,
                  400, 0.2, 0.25, 1, 4096, 16 << 20, 1)


def default() -> Config:
    """The measuring run."""
    return Config("default", 1.0, [1, 4, 16, 64], [1, 64], [1, 64, 1024], 600_000, 300_000,
                  10_000, "64M", 0.5, 4000, 1.0, 1.5, 3, 32_768, 128 << 20, 3)


def make(is_quick: bool, *, seconds: float = 0.0, scale_exceptions: int = 0,
         delete_exceptions: int = 0, cache_size: str | None = None, reps: int = 0,
         nbd_bytes: int = 0, skip: list[str] | None = None) -> Config:
    """The configuration for ``--quick`` or the default run, with overrides applied (0 or
    None: keep the mode's value)."""
    cfg = quick() if is_quick else default()
    if seconds:
        cfg.seconds = cfg.cost_seconds = seconds
        cfg.lib_seconds = seconds
    if scale_exceptions:
        cfg.scale_exceptions = scale_exceptions
        cfg.delete_exceptions = min(1_000_000, scale_exceptions // 2)
        cfg.mode += "+scale"
    if delete_exceptions:
        cfg.delete_exceptions = delete_exceptions
    if cache_size:
        cfg.cache_size = cache_size
    if reps:
        cfg.cost_reps = reps
    if nbd_bytes:
        cfg.nbd_bytes = nbd_bytes
    cfg.skip = set(skip or [])
    return cfg
