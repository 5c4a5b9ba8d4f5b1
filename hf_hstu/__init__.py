"""hf_hstu: HSTU (Zhai et al., ICML 2024) and SASRec as Hugging Face models.

Importing the package registers both models with `AutoConfig`/`AutoModel`, and marks them so that `save_pretrained`
writes `auto_map` and copies the model code: checkpoints then load with `trust_remote_code=True` where this package
is not installed.
"""

from transformers import AutoConfig, AutoModel

from .modeling.configuration_hstu import HSTUConfig
from .modeling.configuration_recommender import SequentialRecommenderConfig
from .modeling.configuration_sasrec import SASRecConfig
from .modeling.modeling_hstu import HSTUModel, HSTUPreTrainedModel
from .modeling.modeling_recommender import RecommendationOutput, SequentialRecommenderOutput
from .modeling.modeling_sasrec import SASRecModel, SASRecPreTrainedModel
from .recommender import Recommender

__version__ = "0.1.0"

for _config_class, _model_class in ((HSTUConfig, HSTUModel), (SASRecConfig, SASRecModel)):
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _model_class, exist_ok=True)
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModel")

__all__ = [
    "HSTUConfig",
    "HSTUModel",
    "HSTUPreTrainedModel",
    "RecommendationOutput",
    "Recommender",
    "SASRecConfig",
    "SASRecModel",
    "SASRecPreTrainedModel",
    "SequentialRecommenderConfig",
    "SequentialRecommenderOutput",
]
