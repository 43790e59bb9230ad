"""Pure tensor functions for RL on language models, registered by name.

Advantage estimators map a `(P, G)` reward matrix (P prompts, G completions each) to advantages;
policy losses map per-token log-probs and advantages to `(loss, metrics)`. A `Learner` names the
pair used by `--learner`. Nothing here knows about models, actors or configs.
"""

from distrl.algorithms.advantages import ADVANTAGES, compute_advantages, topk_indices
from distrl.algorithms.logprobs import token_logprobs
from distrl.algorithms.losses import (KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES, aggregate, k3_kl,
                                     kl_estimate, policy_loss)
from distrl.algorithms.registry import LEARNERS, Learner, get_learner

__all__ = [
    "ADVANTAGES", "KL_ESTIMATORS", "LEARNERS", "LOSS_AGGREGATIONS", "POLICY_LOSSES", "Learner", "aggregate",
    "compute_advantages", "get_learner", "k3_kl", "kl_estimate", "policy_loss", "token_logprobs", "topk_indices",
]
