"""What the user writes: the typed, frozen configs, the YAML search-space forms that sample
them, loading a spec file, and the errors a user can fix.

Everything above this layer takes these typed configs; raw YAML never leaves it.
"""

from search.config.errors import InvalidValue, SpecError, UserError
from search.config.space import InvalidSample, LowEndSuggester, RandomSuggester, random_samples
from search.config.spec import (
    SCHEMA_VERSION,
    TORCHVISION_ARCHS,
    SGD,
    Adam,
    AdamW,
    Augment,
    AuxHead,
    BudgetConfig,
    Constant,
    Cosine,
    DataConfig,
    Head,
    ModelConfig,
    MultiStep,
    OneCycle,
    OptimizerConfig,
    PrunerConfig,
    ResNetConfig,
    ResourcesConfig,
    SamplerConfig,
    SchedulerConfig,
    Spec,
    SqueezeExcite,
    Stage,
    Stem,
    Step,
    StudyConfig,
    TorchvisionResNetConfig,
    TrainConfig,
    TrialConfig,
    fixed_document,
    load_spec,
    parse_spec,
    to_plain,
)

__all__ = [
    "SCHEMA_VERSION", "TORCHVISION_ARCHS", "SGD", "Adam", "AdamW", "Augment", "AuxHead", "BudgetConfig",
    "Constant", "Cosine", "DataConfig", "Head", "InvalidSample", "InvalidValue", "LowEndSuggester",
    "ModelConfig", "MultiStep", "OneCycle", "OptimizerConfig", "PrunerConfig", "RandomSuggester",
    "ResNetConfig", "ResourcesConfig", "SamplerConfig", "SchedulerConfig", "Spec", "SpecError",
    "SqueezeExcite", "Stage", "Stem", "Step", "StudyConfig", "TorchvisionResNetConfig", "TrainConfig",
    "TrialConfig", "UserError", "fixed_document", "load_spec", "parse_spec", "random_samples", "to_plain",
]
