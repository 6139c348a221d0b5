"""WARM's diversity sources expanded into M run specs (Ramé et al. 2024, §5): data order, learning
rate, dropout, and Baklava inits (bodies from different checkpoints of one SFT run)."""
from __future__ import annotations

import dataclasses

from warm_jax.checks import check_range


@dataclasses.dataclass(frozen=True)
class RunSpec:
    member: int
    data_seed: int
    learning_rate: float
    dropout: float
    init_step: int     # which SFT checkpoint the body comes from (Baklava)
    rng_seed: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DiversityConfig:
    """How M members differ. Each grid is cycled over members (member i takes grid[i % len])."""
    num_members: int = 6
    learning_rates: tuple[float, ...] = (1e-3,)
    dropouts: tuple[float, ...] = (0.0,)
    baklava_steps: tuple[int, ...] = ()   # () = every member starts from the last SFT checkpoint
    vary_data_order: bool = True
    seed: int = 0
    # instead of cycling grids: one (learning_rate, dropout, sft_step) per member, e.g. a "ladder"
    # of increasing diversity for the LMC analysis (member 1 differs from 0 by data order only, ...)
    explicit: tuple[tuple[float, float, int], ...] = ()

    def __post_init__(self):
        o = "DiversityConfig"
        check_range(o, "num_members", self.num_members, 1, 64)
        if not self.learning_rates or not self.dropouts:
            raise ValueError(f"{o}: learning_rates and dropouts need at least one value")
        for lr in self.learning_rates:
            check_range(o, "learning_rates[i]", lr, 0.0, 10.0, lo_open=True)
        for d in self.dropouts:
            check_range(o, "dropouts[i]", d, 0.0, 0.9)
        if self.explicit:
            if len(self.explicit) != self.num_members:
                raise ValueError(f"{o}.explicit has {len(self.explicit)} entries for "
                                 f"num_members={self.num_members}")
            for i, (lr, d, _) in enumerate(self.explicit):
                check_range(o, f"explicit[{i}].learning_rate", lr, 0.0, 10.0, lo_open=True)
                check_range(o, f"explicit[{i}].dropout", d, 0.0, 0.9)


def expand(cfg: DiversityConfig, final_sft_step: int) -> list[RunSpec]:
    """M run specs from one base config; a member's spec is what makes it differ from the others."""
    steps = cfg.baklava_steps or (final_sft_step,)
    if cfg.explicit:
        return [RunSpec(member=i, data_seed=cfg.seed + (1000 * (i + 1) if cfg.vary_data_order else 0),
                        learning_rate=float(lr), dropout=float(d), init_step=int(step),
                        rng_seed=cfg.seed + 7919 * (i + 1))
                for i, (lr, d, step) in enumerate(cfg.explicit)]
    return [RunSpec(member=i,
                    data_seed=cfg.seed + (1000 * (i + 1) if cfg.vary_data_order else 0),
                    learning_rate=cfg.learning_rates[i % len(cfg.learning_rates)],
                    dropout=cfg.dropouts[i % len(cfg.dropouts)],
                    init_step=steps[i % len(steps)],
                    rng_seed=cfg.seed + 7919 * (i + 1))
            for i in range(cfg.num_members)]
