"""What the user writes: the typed, frozen configs, the YAML search-space forms that sample
them, loading a spec file, and the errors a user can fix.

Everything above this layer takes these typed configs; raw YAML never leaves it. Modules,
lowest first: ``errors``; ``distributions`` (the nodes of a search space); ``parsing``
(YAML values to nodes, against type hints); ``suggesters`` (sampling without a study);
``names`` (which study names may name files); ``schema`` (the frozen configs); ``safe_yaml``
(YAML text read within limits); ``loading`` (spec files to a :class:`Spec` and back).
"""

from search.config.distributions import InvalidSample
from search.config.errors import InvalidValue, SpecError, UserError
from search.config.loading import SCHEMA_VERSION, fixed_document, load_spec, parse_spec, to_plain
from search.config.model_configs import (
    TORCHVISION_ARCHS,
    AuxHead,
    BatchNorm,
    Head,
    ModelConfig,
    ResNetConfig,
    SqueezeExcite,
    Stage,
    Stem,
    TorchvisionResNetConfig,
)
from search.config.schema import (
    BudgetConfig,
    DataConfig,
    LatencyConfig,
    PriorConfig,
    PrunerConfig,
    ResourcesConfig,
    SamplerConfig,
    Spec,
    StudyConfig,
    TrackingConfig,
    TrialConfig,
)
from search.config.suggesters import LowEndSuggester, RandomSuggester, random_samples
from search.config.train_configs import (
    SGD,
    Adam,
    AdamW,
    Augment,
    Constant,
    Cosine,
    Ema,
    LrScaling,
    MultiStep,
    OneCycle,
    OptimizerConfig,
    ProgressiveResize,
    SchedulerConfig,
    Step,
    TrainConfig,
    Tta,
)

__all__ = [
    "SCHEMA_VERSION",
    "TORCHVISION_ARCHS",
    "SGD",
    "Adam",
    "AdamW",
    "Augment",
    "AuxHead",
    "BatchNorm",
    "BudgetConfig",
    "Constant",
    "Cosine",
    "DataConfig",
    "Ema",
    "Head",
    "InvalidSample",
    "InvalidValue",
    "LatencyConfig",
    "LrScaling",
    "ProgressiveResize",
    "LowEndSuggester",
    "ModelConfig",
    "MultiStep",
    "OneCycle",
    "OptimizerConfig",
    "PrunerConfig",
    "PriorConfig",
    "RandomSuggester",
    "ResNetConfig",
    "ResourcesConfig",
    "SamplerConfig",
    "SchedulerConfig",
    "Spec",
    "SpecError",
    "SqueezeExcite",
    "Stage",
    "Stem",
    "Step",
    "StudyConfig",
    "TorchvisionResNetConfig",
    "TrackingConfig",
    "TrainConfig",
    "TrialConfig",
    "Tta",
    "UserError",
    "fixed_document",
    "load_spec",
    "parse_spec",
    "random_samples",
    "to_plain",
]
